"""The CARE nodes (ComfyUI V3 schema). Thin glue: widgets -> engine calls -> ComfyUI objects.

Imported only inside ComfyUI (from :func:`comfy_entrypoint`); the engine does every computation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from comfy_api.latest import io, ui

from . import adapters
from .engine import concepts as _concepts
from .engine import delta as _delta
from .engine import engine_module
from .engine import vectors as _vectors
from .lora_files import lora_target
from .widgets import text_list, weight

CATEGORY = "CARE erasure"
Concepts = io.Custom("CARE_CONCEPTS")
Erasure = io.Custom("CARE_ERASURE")


@dataclass
class ErasureResult:
    """What flows on a CARE_ERASURE link: the engine's delta and report, plus where it came from."""

    delta: object  # erasure.delta.Delta
    report: object  # erasure.report.EraseReport
    family: str
    sites: int
    extra: dict = field(default_factory=dict)

    def text(self) -> str:
        header = f"CARE erasure on a {self.family} model: {self.sites} sites, rank {self.report.stats.get('rank', '?')}"
        return header + "\n\n" + self.report.as_table()


def _check_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


# --------------------------------------------------------------------------------------------- concepts
class CAREConceptSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREConceptSet",
            display_name="CARE Concept Set",
            category=CATEGORY,
            description=(
                "Lists what to erase and what to keep. Targets are erased (optionally mapped onto an anchor); "
                "retained and CARE concepts are protected. CARE concepts are the ones that co-occur with a "
                "target (water for boat) and are damaged first, so they weigh more by default."
            ),
            inputs=[
                text_list(
                    "targets",
                    "Concepts to erase, one per line (or comma separated). 'concept -> anchor' makes the concept"
                    " read like the anchor; without an anchor it reads like the empty prompt.",
                    placeholder="boat\ncar -> vehicle",
                ),
                text_list(
                    "retained",
                    "General concepts to keep unchanged, one per line; 'concept : weight' sets its weight "
                    "(default: retain weight).",
                    placeholder="dog\ntree : 2.0",
                ),
                text_list(
                    "care",
                    "CARE concepts: ones that appear together with a target (water, harbour for boat). Kept with"
                    " the CARE weight unless 'concept : weight' is given.",
                    placeholder="water\nsea",
                ),
                text_list(
                    "templates",
                    "Prompt templates, one per line, each with '{}' where the concept goes (e.g. 'a photo of "
                    "{}'). Every concept is encoded in every template.",
                    default="{}",
                ),
                weight(
                    "retain_weight",
                    _concepts.DEFAULT_RETAIN_WEIGHT,
                    "Default weight of a retained concept: how strongly its outputs are kept.",
                ),
                weight(
                    "care_weight",
                    _concepts.DEFAULT_CARE_WEIGHT,
                    "Default weight of a CARE concept (usually larger than the retain weight).",
                ),
                text_list(
                    "contexts",
                    "Optional context pairs 'prompt => concept': inside that prompt the concept should read as "
                    "it does alone (protects water in 'a boat on water').",
                    placeholder="a boat on water => water",
                    optional=True,
                ),
            ],
            outputs=[
                Concepts.Output(
                    display_name="concepts", tooltip="The concept set, for CARE Erase or CARE Merge Concept Sets."
                ),
                io.String.Output(
                    display_name="summary", tooltip="One line: how many targets, retained and CARE concepts, templates."
                ),
            ],
        )

    @classmethod
    def _build(cls, targets, retained, care, templates, retain_weight, care_weight, contexts=""):
        return _concepts.ConceptSet.from_text(
            targets,
            retained=retained,
            care=care,
            contexts=contexts or "",
            templates=templates,
            retain_weight=retain_weight,
            care_weight=care_weight,
        )

    @classmethod
    def validate_inputs(
        cls, targets=None, retained=None, care=None, templates=None, retain_weight=None, care_weight=None, contexts=None
    ):
        values = (targets, retained, care, templates, retain_weight, care_weight)
        if any(v is None for v in values):
            return True  # a linked input: checked when the node runs
        try:
            cls._build(*values, contexts=contexts or "")
        except _concepts.ConceptError as err:
            return f"CARE Concept Set: {err}"
        return True

    @classmethod
    def execute(cls, targets, retained, care, templates, retain_weight, care_weight, contexts="") -> io.NodeOutput:
        concept_set = cls._build(targets, retained, care, templates, retain_weight, care_weight, contexts)
        return io.NodeOutput(concept_set, concept_set.summary())


class CAREMergeConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREMergeConcepts",
            display_name="CARE Merge Concept Sets",
            category=CATEGORY,
            description=(
                "Joins two concept sets and/or extends one with more targets, retained or CARE concepts. "
                "A concept kept by both keeps the larger weight."
            ),
            inputs=[
                Concepts.Input("concepts", tooltip="The concept set to extend."),
                Concepts.Input("other", optional=True, tooltip="Optional second concept set merged into the first."),
                text_list("more_targets", "Extra targets, one per line ('concept -> anchor' allowed).", optional=True),
                text_list(
                    "more_retained", "Extra retained concepts, one per line ('concept : weight' allowed).", optional=True
                ),
                text_list("more_care", "Extra CARE concepts, one per line ('concept : weight' allowed).", optional=True),
                weight(
                    "retain_weight",
                    _concepts.DEFAULT_RETAIN_WEIGHT,
                    "Weight of the extra retained concepts without an explicit weight.",
                    optional=True,
                ),
                weight(
                    "care_weight",
                    _concepts.DEFAULT_CARE_WEIGHT,
                    "Weight of the extra CARE concepts without an explicit weight.",
                    optional=True,
                ),
            ],
            outputs=[
                Concepts.Output(display_name="concepts", tooltip="The merged concept set."),
                io.String.Output(display_name="summary", tooltip="One line describing the merged set."),
            ],
        )

    @classmethod
    def execute(
        cls,
        concepts,
        other=None,
        more_targets="",
        more_retained="",
        more_care="",
        retain_weight=_concepts.DEFAULT_RETAIN_WEIGHT,
        care_weight=_concepts.DEFAULT_CARE_WEIGHT,
    ) -> io.NodeOutput:
        merged = concepts if other is None else concepts.merged(other)
        if (more_targets or "").strip() or (more_retained or "").strip() or (more_care or "").strip():
            # the extras are parsed as a set of their own (reusing the targets when none are added)
            own_targets = "\n".join(f"{t.concept} -> {t.anchor}" if t.anchor else t.concept for t in merged.targets)
            extra = _concepts.ConceptSet.from_text(
                more_targets if (more_targets or "").strip() else own_targets,
                retained=more_retained or "",
                care=more_care or "",
                templates="\n".join(merged.templates),
                retain_weight=retain_weight,
                care_weight=care_weight,
            )
            merged = merged.merged(extra)
        return io.NodeOutput(merged, merged.summary())


# --------------------------------------------------------------------------------------------- erase
class CAREErase(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREErase",
            display_name="CARE Erase Concepts",
            category=CATEGORY,
            description=(
                "Erases the target concepts from the MODEL in closed form (seconds, no training) while keeping "
                "the retained and CARE concepts. Returns a patched copy of the MODEL (the input MODEL is not "
                "changed) and an erasure report. The change is an exact LoRA on the cross-attention keys/values "
                "(SD1.x/SD2.x/SDXL) or on the text projection (SD3 context_embedder, FLUX txt_in)."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The diffusion model to erase concepts from (SD1.x, SD2.x, SDXL, SD3 or FLUX)."
                ),
                io.Clip.Input(
                    "clip",
                    tooltip=(
                        "The text encoder loaded with this MODEL: concepts are encoded exactly as your prompts are."
                    ),
                ),
                Concepts.Input("concepts", tooltip="What to erase and what to keep, from CARE Concept Set."),
                weight(
                    "erase_scale",
                    1.0,
                    "How strongly the targets are pulled onto their anchors (weight of the erase term).",
                    step=0.05,
                    maximum=100.0,
                ),
                weight(
                    "retain_weight",
                    1.0,
                    "Multiplies every retained/CARE concept's weight: higher keeps them closer to the original, "
                    "at some cost in erasure.",
                    step=0.05,
                ),
                weight(
                    "context_weight", 1.0, "Multiplies the weight of the context pairs of the concept set.", step=0.05
                ),
                io.Float.Input(
                    "lambda_",
                    display_name="lambda",
                    default=0.1,
                    min=1e-6,
                    max=1e6,
                    step=0.01,
                    tooltip="Ridge term: keeps the edit small where no concept speaks. Must be > 0.",
                ),
                io.Boolean.Input(
                    "strict",
                    default=False,
                    tooltip=(
                        "Strict preservation: the retained concepts' vectors are kept exactly (the edit is "
                        "restricted to their orthogonal complement). Targets lying in that span are erased less; the"
                        " report shows it."
                    ),
                ),
                io.Combo.Input(
                    "token_scope",
                    options=list(_vectors.TOKEN_SCOPES),
                    default="concept_to_eos",
                    tooltip=(
                        "Which token vectors carry a concept: 'concept' its own tokens; 'concept_to_eos' also the "
                        "later tokens up to end-of-text (CLIP default); 'all' every position (T5-style encoders)."
                    ),
                ),
                io.Combo.Input(
                    "sites",
                    options=list(adapters.SITE_CHOICES),
                    default="auto",
                    tooltip=(
                        "Which linear maps to edit: 'auto' = keys+values for UNet models, the text projection for "
                        "SD3/FLUX; 'keys' or 'values' edit only one of the two (UNet models)."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="A patched copy of the MODEL with the concepts erased."),
                Erasure.Output(
                    display_name="erasure",
                    tooltip="The erasure (delta + report): save it as a LoRA or show its report.",
                ),
                io.String.Output(display_name="report", tooltip="The erasure report as a text table."),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, concepts, erase_scale, retain_weight, context_weight, lambda_, strict, token_scope, sites
    ) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        erase_mod = engine_module("erase")
        family, edit_sites = adapters.model_edit_sites(model, sites, adapters.patched_weight_fn(model))
        encoder = adapters.ComfyTextEncoder(
            clip, on_batch=lambda done, total: _check_interrupt(), truncate=token_scope != "all"
        )
        adapters.check_widths(encoder, edit_sites, family)
        settings = erase_mod.EraseSettings(
            erase_scale=erase_scale,
            retain_scale=retain_weight,
            context_scale=context_weight,
            lam=lambda_,
            strict=strict,
            token_scope=token_scope,
        )
        pbar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            _check_interrupt()
            pbar.update_absolute(done, total)

        result = erase_mod.erase(
            edit_sites,
            encoder,
            concepts,
            settings,
            device=comfy.model_management.get_torch_device(),
            progress=progress,
        )
        result.delta.metadata["model_family"] = family.label
        result.delta.metadata["sites"] = sites
        patched, _ = adapters.patched_clone(model, result.delta.lora_state_dict("comfy"))
        erasure = ErasureResult(result.delta, result.report, family.label, len(edit_sites))
        return io.NodeOutput(patched, erasure, erasure.text())


# --------------------------------------------------------------------------------------------- report
class CAREShowReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREShowReport",
            display_name="CARE Show Erasure Report",
            category=CATEGORY,
            description=(
                "Shows the erasure report on the node: per target, the residual to its anchor (0 = fully erased, "
                "1 = unchanged); per retained concept, the output drift (0 = untouched)."
            ),
            inputs=[Erasure.Input("erasure", tooltip="The erasure from CARE Erase Concepts.")],
            outputs=[
                io.String.Output(
                    display_name="json", tooltip="The full report as JSON (settings and timings included)."
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, erasure) -> io.NodeOutput:
        text = erasure.text()
        return io.NodeOutput(erasure.report.to_json(), ui=ui.PreviewText(text))


# --------------------------------------------------------------------------------------------- LoRA files
class CARESaveErasureLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CARESaveErasureLoRA",
            display_name="CARE Save Erasure as LoRA",
            category=CATEGORY,
            description=(
                "Writes the erasure as a LoRA (.safetensors) into the first 'loras' folder, so the stock LoRA "
                "loaders list it. The file is exact (no rank truncation) and records the concepts and settings "
                "in its metadata. Existing files are kept unless overwrite is on."
            ),
            inputs=[
                Erasure.Input("erasure", tooltip="The erasure from CARE Erase Concepts."),
                io.String.Input(
                    "filename",
                    default="care_erasure",
                    tooltip=(
                        "File name inside the loras folder ('.safetensors' is added); sub-folders like 'care/boat' "
                        "are allowed, paths leaving the folder are refused."
                    ),
                ),
                io.Combo.Input(
                    "key_format",
                    options=list(_delta.KEY_FORMATS),
                    default="comfy",
                    tooltip=(
                        "LoRA key names: 'comfy' (diffusion_model.<path>) loads in ComfyUI; 'kohya' (lora_unet_...) "
                        "suits other tools."
                    ),
                ),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of the same name."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name", tooltip="The name the LoRA loaders list the file under.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, erasure, filename, key_format, overwrite) -> io.NodeOutput:
        import folder_paths

        folders = folder_paths.get_folder_paths("loras")
        if not folders:
            raise ValueError("ComfyUI has no 'loras' folder configured")
        path, name = lora_target(folders[0], filename, overwrite=overwrite)
        erasure.delta.save_lora(path, key_format=key_format, overwrite=overwrite)
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name} in {folders[0]}"))


class CARELoadErasureLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="CARELoadErasureLoRA",
            display_name="CARE Load Erasure LoRA",
            category=CATEGORY,
            description=(
                "Applies a saved erasure LoRA (or diff file) to a MODEL, exactly as the stock LoRA loader would, "
                "and tells which concepts it erases."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the erasure was made for."),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="The erasure file in the loras folder.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.05,
                    tooltip="1 applies the erasure as computed; 0 leaves the model unchanged; -1 undoes it.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="A patched copy of the MODEL."),
                io.String.Output(display_name="info", tooltip="What the file erases (from its metadata)."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        adapters.model_family(model)  # refuses unsupported families with a clear message
        edit_state = adapters.diffusion_state_dict(model)
        site_names = [k[len(adapters.DIFFUSION_PREFIX) : -len(".weight")] for k in edit_state if k.endswith(".weight")]
        loaded = _delta.load_delta(path, site_names)
        if strength == 0:
            patched = model.clone()
        else:
            patched, _ = adapters.patched_clone(model, loaded.lora_state_dict("comfy"), strength)
        info = _describe(lora_name, loaded.metadata)
        return io.NodeOutput(patched, info, ui=ui.PreviewText(info))


def _describe(name: str, metadata: dict) -> str:
    def listed(key: str) -> str:
        try:
            values = json.loads(metadata.get(key, "[]"))
        except json.JSONDecodeError:
            return metadata.get(key, "")
        return ", ".join(map(str, values)) if values else "-"

    if "targets" not in metadata:
        return f"{name}: no CARE metadata (a LoRA made elsewhere)"
    return (
        f"{name}: erases {listed('targets')}; keeps {listed('retained')}; "
        f"method {metadata.get('method', '?')}, model {metadata.get('model_family', '?')}"
    )


NODES: list[type[io.ComfyNode]] = [
    CAREConceptSet,
    CAREMergeConcepts,
    CAREErase,
    CAREShowReport,
    CARESaveErasureLoRA,
    CARELoadErasureLoRA,
]
