"""EMMA-X building blocks (Guo et al. 2023), assembled into the "emma_x" objective by
xlm_jax/objectives/emma_x.py.

  classifier.py  the diagonal-GMM semantic-relation classifier, its posterior and loss
  losses.py      rank temperatures, encoder-side ranks, the rank-wise InfoNCE (RINCE)
  queue.py       key queue, momentum key encoder, EMA of the per-rank mean similarities
  towers.py      the sentence head z and the query / key encoder forward passes
  steps.py       the pure e_step / m_step / em_step functions over the explicit TrainState
"""
