"""The Gradio demo, in parts that can be read and tested alone:

- `app`: ``build_demo``, ``launch_demo``, ``resolve_model`` (what ``mirror-unet demo`` and the Space's
  ``app.py`` call);
- `layout`: the page's components; `wiring`: their events, turned into handler calls and page updates;
- `handlers`: what each event does (load, segment, move a slider, go to a lesion), on plain Python,
  numpy and PIL values, without Gradio;
- `session`: one browser session's study and results, and the temporary folders holding their files;
- `text`: the page's words.

Importing this package (or `handlers`, `session`, `text`) does not import Gradio.
"""
