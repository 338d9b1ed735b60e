"""The registry of families: every template the generator draws from, by name (see each module for its job)."""

from __future__ import annotations

from . import fam_accum, fam_elementwise, fam_grid, fam_neighbours, fam_select
from .kit import Family

FAMILIES: dict[str, Family] = {
    f.name: f
    for module in (fam_elementwise, fam_select, fam_grid, fam_accum, fam_neighbours)
    for f in module.FAMILIES
}
