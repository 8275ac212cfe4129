"""Subject keys as the real Exim computes and finds them: IPv6 grouping as its ${mask:},
the longest lsearch line found by its lookup."""

from __future__ import annotations

from pathlib import Path

from eximhook.model.subjects import lsearch_line, normalize

from ..support.harness import exim_expand
from ..support.marks import needs_exim


@needs_exim
def test_ipv6_grouping_matches_exims_mask() -> None:
    assert normalize("relay", "2001:db8:1:2:3:4:5:6") == exim_expand("${mask:2001:db8:1:2:3:4:5:6/64}")


@needs_exim
def test_longest_lsearch_line_is_found_by_exim(tmp_path: Path) -> None:
    key = "x" * 3997
    path, key_file = tmp_path / "list", tmp_path / "key"
    path.write_bytes(lsearch_line(key) or b"")
    key_file.write_text(key)  # -be input lines are short: let Exim read the key itself
    assert exim_expand(f"${{lookup{{${{readfile{{{key_file}}}}}}}lsearch{{{path}}}{{yes}}{{no}}}}") == "yes"
