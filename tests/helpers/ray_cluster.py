"""Ray helpers shared by the Ray and Tune tests."""

from __future__ import annotations


def distcb_actors_alive(ray) -> list[str]:
    """Names of live distcb actors (all of ours are named distcb-...)."""
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["name"].startswith("distcb-")
    )
