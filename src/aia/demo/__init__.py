"""``aia demo``: the paper's pipeline at micro scale on scikit-learn's digits.

Importing this package registers the demo's model family (a plain causal LM whose
processor carries a VQ image tokenizer, :mod:`.vqlm`) with :mod:`aia.adapters`, so
``aia profile`` / ``aia train`` read the models the demo saves. The family is registered
``marked``: it serves only the ``LlamaForCausalLM`` models whose config carries the marker
:func:`aia.demo.digits.build_digits_model` writes (``aia_family: vqlm``), never a plain Llama.
"""

from aia.adapters import register_adapter
from aia.demo.vqlm import VQLMAdapter

register_adapter("LlamaForCausalLM", VQLMAdapter, marked=True)

from aia.demo.pipeline import run_demo  # noqa: E402  (after the registration it relies on)

__all__ = ["VQLMAdapter", "run_demo"]
