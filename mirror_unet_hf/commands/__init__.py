"""Sub-commands of the ``mirror-unet`` CLI (see ``mirror_unet_hf.cli``)."""
