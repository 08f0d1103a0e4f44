"""The fingerprint covers content settings only; the diff explains what changed."""

from __future__ import annotations

from typing import Any

from sluiceway.config import (
    CustomColumnConfig,
    canonical_config,
    config_diff,
    config_fingerprint,
    parse_config,
)


def data(**run: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "local", "type": "simulated"}],
        "models": [{"alias": "writer", "provider": "local", "model": "sim-chat"}],
        "columns": [
            {"name": "topic", "type": "sampler", "sampler": {"kind": "uuid"}},
            {"name": "text", "type": "llm_text", "model": "writer", "prompt": "About {{ topic }}"},
        ],
        "run": {"num_records": 10, **run},
    }


def test_fingerprint_is_stable_and_hex() -> None:
    first = config_fingerprint(parse_config(data()))
    assert first == config_fingerprint(parse_config(data()))
    assert len(first) == 64
    int(first, 16)


def test_fingerprint_changes_with_a_prompt_but_not_with_buffer_size() -> None:
    base = config_fingerprint(parse_config(data()))
    changed_prompt = data()
    changed_prompt["columns"][1]["prompt"] = "Regarding {{ topic }}"
    assert config_fingerprint(parse_config(changed_prompt)) != base
    assert config_fingerprint(parse_config(data(buffer_size=7))) == base


def test_scheduling_knobs_and_output_do_not_change_the_fingerprint() -> None:
    base = config_fingerprint(parse_config(data()))
    tuned = data(max_concurrent_row_groups=9, max_in_flight_tasks=5, retry={"max_attempts": 2})
    tuned["models"][0].update(max_parallel_requests=32, timeout_seconds=5, rpm=100)
    tuned["providers"][0]["simulation"] = {"latency_seconds": 2.0, "capacity": 3}
    tuned["output"] = {"path": "elsewhere", "overwrite": True}
    assert config_fingerprint(parse_config(tuned)) == base


def test_content_settings_change_the_fingerprint() -> None:
    base = config_fingerprint(parse_config(data()))
    for variant in (data(seed=1), data(num_records=11)):
        assert config_fingerprint(parse_config(variant)) != base
    other_model = data()
    other_model["models"][0]["model"] = "sim-chat-2"
    assert config_fingerprint(parse_config(other_model)) != base
    other_parameters = data()
    other_parameters["models"][0]["parameters"] = {"temperature": 0.1}
    assert config_fingerprint(parse_config(other_parameters)) != base


def shout(row: dict[str, Any]) -> str:
    return str(row).upper()


def test_callables_are_fingerprinted_by_reference() -> None:
    by_object = data()
    by_object["columns"].append(CustomColumnConfig(name="loud", function=shout))
    by_string = data()
    by_string["columns"].append({"name": "loud", "type": "custom", "function": f"{__name__}:shout"})
    assert config_fingerprint(parse_config(by_object)) == config_fingerprint(
        parse_config(by_string)
    )


def test_config_diff_names_what_changed() -> None:
    old = parse_config(data())
    changed = data(seed=5, buffer_size=50)
    changed["columns"][1]["prompt"] = "Regarding {{ topic }}"
    changed["columns"].append({"name": "extra", "type": "sampler", "sampler": {"kind": "uuid"}})
    changed["models"][0]["parameters"] = {"temperature": 0.5}
    lines = config_diff(old, parse_config(changed))
    assert lines[0] == "models[writer].parameters.temperature: added 0.5"
    assert lines[1] == 'columns[text].prompt: "About {{ topic }}" -> "Regarding {{ topic }}"'
    assert lines[2].startswith('columns[extra]: added {"depends_on":')
    assert lines[3] == "run.seed: 0 -> 5"
    assert len(lines) == 4  # buffer_size is not part of the fingerprint


def test_config_diff_reports_removed_entries_and_reordering() -> None:
    old = canonical_config(parse_config(data()))
    reordered = data()
    reordered["columns"].reverse()
    new = canonical_config(parse_config(reordered))
    assert config_diff(old, new) == ["columns: order changed"]
    fewer = data()
    fewer["columns"][1] = {"name": "other", "type": "sampler", "sampler": {"kind": "uuid"}}
    removed = config_diff(old, canonical_config(parse_config(fewer)))
    assert removed[0].startswith("columns[text]: removed (was ")
    assert removed[1].startswith("columns[other]: added ")
    assert config_diff(old, old) == []
