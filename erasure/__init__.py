"""CARE Concept Erasure engine: pure torch, no ComfyUI import.

The flow, downhill: a :class:`~erasure.concepts.ConceptSet` is encoded into token vectors
(:mod:`erasure.vectors`), the linear maps that read those vectors are found (:mod:`erasure.sites`),
one closed-form system per input width gives an exact low-rank change (:mod:`erasure.solve`), which is
kept, applied and exported as a :class:`~erasure.delta.Delta` (:mod:`erasure.delta`).
"""

__version__ = "0.1.0"
