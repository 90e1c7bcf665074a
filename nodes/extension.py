"""The pack's ComfyExtension (V3): the CARE nodes.

The core nodes live in :mod:`.care_nodes`. Other node modules of this package (audit, fine-tuning,
neighbour suggestions...) each export a ``NODES`` list and are listed in :data:`NODE_MODULES`; one that is
missing is skipped, and one that fails to import is logged without taking the core nodes down with it.
"""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

from .care_nodes import NODES

NODE_MODULES = ("audit", "finetune", "neighbors")


def all_nodes() -> list[type[io.ComfyNode]]:
    nodes = list(NODES)
    for name in NODE_MODULES:
        qualified = f"{__package__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name == qualified:
                continue
            logging.exception("CARE erasure: the %s nodes could not be loaded", name)
            continue
        except Exception:
            logging.exception("CARE erasure: the %s nodes could not be loaded", name)
            continue
        nodes += [n for n in getattr(module, "NODES", []) if n not in nodes]
    return nodes


class CareExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
