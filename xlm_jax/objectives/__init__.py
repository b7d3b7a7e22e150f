"""Training objectives, one module per registry key (`mlm.py` registers "mlm").

Nothing is imported here: xlm_jax.registry.OBJECTIVES imports `xlm_jax.objectives.<key>` the
first time a key is looked up, so a run loads only the objectives it trains (and their data
dependencies). Objective modules share code through helper modules that register nothing
(base, masking, mlm_core, pair_inputs, dictionary_swap, attention_patterns, emma/), never by
importing one another.
"""
