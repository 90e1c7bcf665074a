"""Audit and comparison-grid nodes (ComfyUI V3 schema). Thin glue: ComfyUI sampling and objects in,
engine calls (:mod:`erasure.audit`, :mod:`erasure.grid`) for every measurement and picture.

* ``CAREComparisonGrid`` samples every probe (concept-set targets / CARE / unrelated, or a prompt list)
  from the original and the erased MODEL over the same seeds and returns one labelled grid IMAGE, plus
  the paired samples for the audit node;
* ``CAREGridFromBatches`` lays out image batches sampled elsewhere as the same kind of grid;
* ``CAREAudit`` measures site drift, denoiser drift (SD1.x/SD2.x/SDXL), paired SSIM/PSNR (from the grid
  node's samples) and, with a local CLIP folder, the zero-shot CARE score; returns the report and its images.

Every image sampled advances a progress bar and checks for interruption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io, ui

from . import adapters
from .engine import engine_module
from .widgets import LATENT_FACTOR, image_side, text_list

CATEGORY = "CARE erasure/audit"
Samples = io.Custom("CARE_AUDIT_SAMPLES")
MODEL_LABELS = ("original", "erased")


@dataclass
class AuditSamples:
    """What flows on a CARE_AUDIT_SAMPLES link: probes, seeds and both models' images (probe-major)."""

    probes: list  # erasure.audit.Probe
    seeds: list[int]
    original: torch.Tensor  # [P * S, H, W, 3]
    erased: torch.Tensor


def _check_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def _probes(concepts, prompts: str, unrelated: str, template: str) -> list:
    audit = engine_module("audit")
    probes = []
    template = template.strip() or "{}"
    if prompts.strip():
        probes += audit.parse_probes(prompts, template)
    extra = [c.strip() for c in unrelated.replace("\n", ",").split(",") if c.strip()]
    if concepts is not None:
        probes += audit.probes_from_concepts(concepts, extra, template)
    elif extra:
        probes += [audit.Probe(c, audit.UNRELATED, audit.probes.fill(template, c)) for c in extra]
    if not probes:
        raise ValueError("nothing to audit: connect a concept set or write prompts (one per line, e.g. 'target: boat')")
    return audit.probes.dedupe(probes)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace("\n", ",").split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"seeds must be whole numbers separated by commas (got '{text}')") from err
    if not seeds:
        raise ValueError("give at least one seed")
    return seeds


def _model_pair_inputs() -> list:
    """The original and erased MODEL and their CLIP: what every comparison node reads."""
    return [
        io.Model.Input("model_original", tooltip="The MODEL before erasure."),
        io.Model.Input("model_erased", tooltip="The MODEL after erasure (e.g. from CARE Erase Concepts)."),
        io.Clip.Input("clip", tooltip="The text encoder loaded with these models."),
    ]


def _probe_inputs() -> list:
    return [
        io.Custom("CARE_CONCEPTS").Input(
            "concepts",
            optional=True,
            tooltip="Concept set from CARE Concept Set: targets, CARE and retained concepts become tagged rows.",
        ),
        io.String.Input(
            "prompts",
            multiline=True,
            default="",
            placeholder="target: boat\ncare: water\na red car",
            tooltip="Extra rows, one per line: 'tag: concept' (tag = target, care or unrelated), optionally "
            "'| exact prompt'; an untagged line is an unrelated prompt.",
        ),
        io.String.Input(
            "unrelated",
            default="",
            placeholder="house, dog",
            tooltip="Unrelated concepts to add as rows (comma separated): they should not change at all.",
        ),
        io.String.Input(
            "template",
            default="a photo of {}",
            tooltip="Prompt pattern each concept is written into; '{}' marks where the concept goes.",
        ),
    ]


# --------------------------------------------------------------------------------------------- sampling glue
def _condition(clip, prompt: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def _sample(
    model,
    vae,
    positive,
    negative,
    seeds: list[int],
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    width: int,
    height: int,
) -> torch.Tensor:
    """Images ``[S, H, W, 3]``, one per seed, sampled as one batch. Each image's starting noise is exactly
    KSampler's for that seed (``prepare_noise`` on a one-image latent), so deterministic samplers give the
    images KSampler + VAEDecode would."""
    import comfy.sample

    latent = torch.zeros([1, 4, height // LATENT_FACTOR, width // LATENT_FACTOR])
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = torch.cat([comfy.sample.prepare_noise(latent, seed, None) for seed in seeds])
    batch = latent.expand(len(seeds), *latent.shape[1:]).contiguous()
    samples = comfy.sample.sample(
        model, noise, steps, cfg, sampler, scheduler, positive, negative, batch, disable_pbar=True, seed=seeds[0]
    )
    images = vae.decode(samples)
    return images.reshape(-1, *images.shape[-3:]).float().cpu()


def _grid_image(samples: AuditSamples, cell: int, title: str) -> torch.Tensor:
    grid = engine_module("grid")
    rows = [grid.GridRow(p.prompt, p.tag) for p in samples.probes]
    pil = grid.batch_grid(
        [samples.original, samples.erased], rows, list(MODEL_LABELS), title, cell, [f"seed {s}" for s in samples.seeds]
    )
    return grid.pil_to_tensor(pil)


class CAREComparisonGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="CAREComparisonGrid",
            is_output_node=True,
            display_name="CARE Comparison Grid",
            category=CATEGORY,
            description=(
                "Samples every concept of the audit (targets, CARE neighbours, unrelated concepts) from the original "
                "and the erased MODEL with the same seeds and settings, and lays the images out as one labelled "
                "grid: rows are concepts tagged TARGET / CARE / UNRELATED, columns are models x seeds. The target "
                "rows should change; the CARE and unrelated rows should not."
            ),
            inputs=[
                *_model_pair_inputs(),
                io.Vae.Input("vae", tooltip="The VAE that decodes the samples."),
                *_probe_inputs(),
                io.String.Input(
                    "seeds", default="0, 1", tooltip="Seeds, comma separated: one column per seed per model."
                ),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps per image."),
                io.Float.Input(
                    "cfg", default=7.0, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance scale."
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=list(comfy.samplers.KSampler.SAMPLERS),
                    default="euler",
                    tooltip="Sampler, as in KSampler.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(comfy.samplers.KSampler.SCHEDULERS),
                    default="normal",
                    tooltip="Noise schedule, as in KSampler.",
                ),
                image_side("width", 512, "Image width in pixels."),
                image_side("height", 512, "Image height in pixels."),
                io.String.Input("negative", default="", tooltip="Negative prompt used for every image."),
                io.Int.Input("cell", default=192, min=32, max=1024, tooltip="Size in pixels of one image in the grid."),
            ],
            outputs=[
                io.Image.Output(display_name="grid", tooltip="The labelled comparison grid (one image)."),
                Samples.Output(display_name="samples", tooltip="The paired images, for CARE Audit's fidelity columns."),
                io.Image.Output(
                    display_name="images", tooltip="Every sampled image: original batch, then erased batch."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model_original,
        model_erased,
        clip,
        vae,
        prompts,
        unrelated,
        template,
        seeds,
        steps,
        cfg,
        sampler_name,
        scheduler,
        width,
        height,
        negative,
        cell,
        concepts=None,
    ) -> io.NodeOutput:
        import comfy.utils

        probes = _probes(concepts, prompts, unrelated, template)
        seed_list = _seeds(seeds)
        total = 2 * len(probes) * len(seed_list)
        pbar = comfy.utils.ProgressBar(total)
        neg = _condition(clip, negative)
        batches = []
        for model in (model_original, model_erased):
            images = []
            for probe in probes:
                _check_interrupt()
                pos = _condition(clip, probe.prompt)
                images.append(
                    _sample(model, vae, pos, neg, seed_list, steps, cfg, sampler_name, scheduler, width, height)
                )
                pbar.update(len(seed_list))
            batches.append(torch.cat(images))
        samples = AuditSamples(probes, seed_list, batches[0], batches[1])
        grid = _grid_image(samples, cell, f"{sampler_name} {steps} steps, cfg {cfg:g}")
        return io.NodeOutput(grid, samples, torch.cat(batches), ui=ui.PreviewImage(grid, cls=cls))


class CAREGridFromBatches(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREGridFromBatches",
            is_output_node=True,
            display_name="CARE Grid From Batches",
            category=CATEGORY,
            description=(
                "Lays out image batches you sampled elsewhere as a labelled comparison grid. Each batch holds one "
                "model's images, row by row (all images of the first row first); rows are labelled and tagged "
                "from the row list."
            ),
            inputs=[
                io.Image.Input("images_a", tooltip="First model's images (e.g. original), row-major."),
                text_list(
                    "rows",
                    "One row per line, top to bottom: 'tag: label' (tag = target, care or unrelated) or a label.",
                    placeholder="target: boat\ncare: water\nunrelated: house",
                ),
                io.Image.Input("images_b", optional=True, tooltip="Second model's images (e.g. erased), same layout."),
                io.String.Input("label_a", default="original", tooltip="Heading of the first batch's columns."),
                io.String.Input("label_b", default="erased", tooltip="Heading of the second batch's columns."),
                io.String.Input(
                    "columns", default="", tooltip="Column labels within a batch, comma separated (default #1, #2...)."
                ),
                io.String.Input("title", default="", tooltip="Title written above the grid."),
                io.Int.Input("cell", default=192, min=16, max=1024, tooltip="Size in pixels of one image in the grid."),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="The labelled grid (one image).")],
        )

    @classmethod
    def execute(cls, images_a, rows, label_a, label_b, columns, title, cell, images_b=None) -> io.NodeOutput:
        audit, grid = engine_module("audit"), engine_module("grid")
        probes = audit.parse_probes(rows)
        grid_rows = [grid.GridRow(p.concept, p.tag) for p in probes]
        batches, labels = [images_a], [label_a]
        if images_b is not None:
            batches.append(images_b)
            labels.append(label_b)
        column_labels = [c.strip() for c in columns.split(",") if c.strip()]
        image = grid.pil_to_tensor(grid.batch_grid(batches, grid_rows, labels, title, cell, column_labels))
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


# --------------------------------------------------------------------------------------------- audit
def _drift_unsupported(model) -> str | None:
    """Why the denoiser drift cannot probe this MODEL, or None. It assumes a variance-preserving
    (epsilon / v / EDM) schedule; SD3 and FLUX are flow-matching models (their site drift still works)."""
    import comfy.model_sampling

    if isinstance(model.model.model_sampling, comfy.model_sampling.CONST):
        family = adapters.model_family(model).label
        return f"denoiser drift skipped: {family} is a flow-matching model (site drift covers it)"
    return None


def _comfy_denoiser(model, clip, width: int, height: int):
    """The MODEL as the engine's Denoiser: ComfyUI's apply_model returns x0 for a VE input at sigma.

    Each prompt's conditioning is what the sampler would pass: the model's own ``extra_conds`` built
    from the CLIP output and its pooled vector (SDXL's ``y`` needs the pooled vector and the image size)."""
    import comfy.model_management

    audit = engine_module("audit")

    def condition(prompts):
        conds = {}
        for p in dict.fromkeys(prompts):
            cross_attn, pooled = clip.encode_from_tokens(clip.tokenize(p), return_pooled=True)
            conds[p] = model.model.extra_conds(
                cross_attn=cross_attn, pooled_output=pooled, width=width, height=height, device=torch.device("cpu")
            )
        return [conds[p] for p in prompts]

    def denoise(x, sigma, cond):
        comfy.model_management.load_models_gpu([model])
        device = model.load_device
        kwargs = {key: torch.cat([c[key].cond for c in cond]).to(device) for key in cond[0]}
        with torch.no_grad():
            out = model.model.apply_model(x.to(device), sigma.to(device), **kwargs)
        return out.float().cpu()

    channels = int(model.model.latent_format.latent_channels)
    shape = (channels, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return audit.SigmaDenoiser.from_sigmas(denoise, condition, model.model.model_sampling.sigmas, shape)


class CAREAudit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CAREAudit",
            is_output_node=True,
            display_name="CARE Collateral-Damage Audit",
            category=CATEGORY,
            description=(
                "Measures how much an erasure changed each concept: site drift (how far the concept's keys/values "
                "moved, instant), denoiser drift (how far the noise prediction moved relative to the prompt's own "
                "effect, seconds), and, with the samples of CARE Comparison Grid, paired SSIM/PSNR. With a local "
                "CLIP folder it also scores whether each concept is still drawn (CARE score). Returns the report "
                "as text and JSON, a colour-coded table and a bar plot (target vs CARE vs unrelated)."
            ),
            inputs=[
                *_model_pair_inputs(),
                *_probe_inputs(),
                Samples.Input(
                    "samples",
                    optional=True,
                    tooltip="Paired images from CARE Comparison Grid: adds SSIM/PSNR (and CARE scores) per row.",
                ),
                io.Boolean.Input(
                    "denoiser_drift",
                    default=True,
                    tooltip="Also measure denoiser drift (a few model evaluations per concept; SD1.x/SD2.x/SDXL, "
                    "skipped with a note for the flow-matching SD3/FLUX).",
                ),
                io.String.Input(
                    "drift_seeds", default="0, 1", tooltip="Noise seeds for the denoiser drift, comma separated."
                ),
                io.Int.Input(
                    "drift_timesteps",
                    default=4,
                    min=1,
                    max=16,
                    tooltip="How many noise levels the denoiser drift probes (evenly spread over high to mid noise).",
                ),
                image_side("width", 512, "Image width the denoiser drift probes (sets the latent size)."),
                image_side("height", 512, "Image height the denoiser drift probes (sets the latent size)."),
                io.String.Input(
                    "clip_classifier",
                    default="",
                    tooltip="Optional: a local Hugging Face CLIP folder for zero-shot CARE scores over the "
                    "rows' concepts (needs transformers; nothing is downloaded). Empty = no CARE score.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The audit as a text table."),
                io.String.Output(display_name="report_json", tooltip="The audit as JSON (every number)."),
                io.Image.Output(display_name="table", tooltip="Colour-coded table: green = unchanged, red = damaged."),
                io.Image.Output(display_name="bars", tooltip="Bar plot per metric, concepts grouped by tag."),
            ],
        )

    @classmethod
    def execute(
        cls,
        model_original,
        model_erased,
        clip,
        prompts,
        unrelated,
        template,
        denoiser_drift,
        drift_seeds,
        drift_timesteps,
        width,
        height,
        clip_classifier,
        concepts=None,
        samples=None,
    ) -> io.NodeOutput:
        import comfy.utils

        audit, grid = engine_module("audit"), engine_module("grid")
        probes = samples.probes if samples is not None else _probes(concepts, prompts, unrelated, template)
        _, original_sites = adapters.model_edit_sites(
            model_original, "auto", adapters.patched_weight_fn(model_original)
        )
        _, erased_sites = adapters.model_edit_sites(model_erased, "auto", adapters.patched_weight_fn(model_erased))
        encoder = adapters.ComfyTextEncoder(clip, on_batch=lambda done, total: _check_interrupt())
        pbar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            _check_interrupt()
            pbar.update_absolute(done, total)

        kwargs: dict = {}
        notes = []
        unsupported = _drift_unsupported(model_original) if denoiser_drift else None
        if unsupported:
            notes.append(unsupported)
        elif denoiser_drift:
            original = _comfy_denoiser(model_original, clip, width, height)
            fractions = audit.denoiser.spread_fractions(drift_timesteps)
            kwargs |= {
                "original": original,
                "edited": _comfy_denoiser(model_erased, clip, width, height),
                "seeds": _seeds(drift_seeds),
                "timesteps": audit.denoiser.probe_timesteps(original.alphas_cumprod.shape[0], fractions),
            }
        if samples is not None:
            n = len(samples.seeds)
            kwargs["images"] = {
                p.concept: audit.ImagePair(samples.original[i * n : (i + 1) * n], samples.erased[i * n : (i + 1) * n])
                for i, p in enumerate(samples.probes)
            }
            if clip_classifier.strip():
                kwargs["classifier"] = audit.care.zero_shot_from_transformers(
                    clip_classifier.strip(), [p.concept for p in probes]
                )
        elif clip_classifier.strip():
            notes.append("CARE score needs the samples input (images to classify)")
        updates = audit.updates_from_weights(original_sites, erased_sites)
        report = audit.run_audit(
            probes, sites=original_sites, updates=updates, encoder=encoder, progress=progress, **kwargs
        )
        text = report.as_table() + ("\n\n" + "\n".join(notes) if notes else "")
        table = grid.pil_to_tensor(audit.table_image(report))
        bars = grid.pil_to_tensor(audit.bar_plot(report))
        return io.NodeOutput(text, report.to_json(), table, bars, ui=ui.PreviewText(text))


NODES: list[type[io.ComfyNode]] = [CAREComparisonGrid, CAREGridFromBatches, CAREAudit]
