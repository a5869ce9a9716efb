"""The embedded world: coloured shapes on a 4x4 grid, prompts in the six GenEval
categories, and an exact judge (docs/design.md §7). It uses nothing of data/,
evaluation/ or models/; they use it. The names below are its public face."""

from gvu_jax.world.pairs import distractors, rejected_scene, sample_scene
from gvu_jax.world.prompts import (CATEGORIES, NUMBERS, OPPOSITE, PromptSpec, RELATIONS, Splits,
                                   all_specs, near_miss, one_attribute_changes, split_specs,
                                   vocabulary)
from gvu_jax.world.scene import (CELL, CODEBOOK_SIZE, COLORS, GRID, IMAGE_SIZE, NUM_CELLS, Object,
                                 PALETTE, SHAPES, Scene, code_of, codes_to_image, image_to_codes,
                                 patch_table, render, scene_to_codes, shape_mask)

__all__ = ['CELL', 'CODEBOOK_SIZE', 'COLORS', 'GRID', 'IMAGE_SIZE', 'NUM_CELLS', 'PALETTE',
           'SHAPES', 'Object', 'Scene', 'code_of', 'codes_to_image', 'image_to_codes',
           'patch_table', 'render', 'scene_to_codes', 'shape_mask', 'CATEGORIES', 'NUMBERS',
           'OPPOSITE', 'RELATIONS', 'PromptSpec', 'Splits', 'all_specs', 'near_miss',
           'split_specs', 'vocabulary', 'one_attribute_changes', 'distractors', 'rejected_scene',
           'sample_scene']
