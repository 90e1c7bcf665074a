"""The pack's ComfyExtension (V3): the list of CARE nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .care_nodes import NODES


class CareExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
