"""ComfyUI glue for the CARE engine: adapters (MODEL/CLIP -> engine objects) and the V3 nodes.

``adapters``, ``lora_files`` and ``engine`` import without ComfyUI; ``care_nodes`` and ``extension``
need ComfyUI's ``comfy_api`` and are imported only by :func:`comfy_entrypoint`.
"""
