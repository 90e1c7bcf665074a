"""CARE Concept Erasure: a ComfyUI node pack (node ids ``CARE...``).

ComfyUI imports this folder as a package (under whatever name it has in ``custom_nodes``) and calls
:func:`comfy_entrypoint`. Nothing heavy happens at import: the nodes and the engine are imported when
ComfyUI asks for the node list.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: the pack's :class:`ComfyExtension`."""
    from .nodes.extension import CareExtension

    return CareExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
