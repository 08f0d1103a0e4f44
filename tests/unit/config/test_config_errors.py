"""Each class of config mistake yields a ConfigError whose issue names the place and the fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sluiceway.config import format_issues, parse_config
from sluiceway.errors import ConfigError, ConfigIssue


def valid_config() -> dict[str, Any]:
    return {
        "providers": [{"name": "local", "type": "simulated"}],
        "models": [{"alias": "writer", "provider": "local", "model": "sim-chat"}],
        "columns": [
            {
                "name": "topic",
                "type": "sampler",
                "sampler": {"kind": "category", "values": ["tea", "coffee"]},
            },
            {"name": "title", "type": "expression", "template": "About {{ topic }}"},
            {
                "name": "summary",
                "type": "llm_text",
                "model": "writer",
                "prompt": "Summarize {{ title }}",
            },
            {
                "name": "facts",
                "type": "llm_structured",
                "model": "writer",
                "prompt": "Facts about {{ topic }}",
                "output_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        ],
        "run": {"num_records": 10},
    }


def issues_of(data: dict[str, Any]) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data, source="dataset.yaml")
    return excinfo.value.issues


def only_issue(data: dict[str, Any]) -> ConfigIssue:
    issues = issues_of(data)
    assert len(issues) == 1, [issue.render() for issue in issues]
    return issues[0]


def test_valid_config_parses() -> None:
    config = parse_config(valid_config())
    assert [column.name for column in config.columns] == ["topic", "title", "summary", "facts"]


def test_wrong_type_names_field_and_value() -> None:
    data = valid_config()
    data["run"]["num_records"] = "abc"
    issue = only_issue(data)
    assert issue.path == "run.num_records"
    assert "valid integer" in issue.message
    assert "'abc'" in issue.message


def test_unknown_column_in_template_names_column_field_and_suggests() -> None:
    data = valid_config()
    data["columns"][2]["prompt"] = "Summarize {{ titel }}"
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).prompt"
    assert "unknown column 'titel'" in issue.message
    assert issue.hint is not None
    assert "did you mean 'title'" in issue.hint


def test_unknown_column_in_skip_when_is_reported_on_skip_when() -> None:
    data = valid_config()
    data["columns"][2]["skip_when"] = "langauge == 'fr'"
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).skip_when"
    assert "'langauge'" in issue.message


def test_dependency_cycle_prints_the_cycle() -> None:
    data = valid_config()
    data["columns"][1]["template"] = "About {{ summary }}"  # title -> summary -> title
    issue = only_issue(data)
    assert issue.path == "columns[1] (title)"
    assert issue.message == "dependency cycle: title -> summary -> title"


def test_self_reference_is_its_own_error() -> None:
    data = valid_config()
    data["columns"][1]["template"] = "{{ title }}!"
    issue = only_issue(data)
    assert issue.path == "columns[1] (title).template"
    assert "depends on itself" in issue.message


def test_unknown_model_alias_suggests_close_match() -> None:
    data = valid_config()
    data["columns"][2]["model"] = "writter"
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).model"
    assert "unknown model alias 'writter'" in issue.message
    assert issue.hint is not None
    assert "did you mean 'writer'" in issue.hint


def test_unknown_model_alias_in_custom_models_names_the_entry() -> None:
    data = valid_config()
    data["columns"].append(
        {"name": "extra", "type": "custom", "function": "pkg.mod:fn", "models": ["writer", "x"]}
    )
    issue = only_issue(data)
    assert issue.path == "columns[4] (extra).models[1]"
    assert "'x'" in issue.message


def test_unknown_provider_in_model() -> None:
    data = valid_config()
    data["models"][0]["provider"] = "locl"
    issue = only_issue(data)
    assert issue.path == "models[0] (writer).provider"
    assert issue.hint is not None
    assert "did you mean 'local'" in issue.hint


def test_invalid_json_schema_names_the_schema_location() -> None:
    data = valid_config()
    data["columns"][3]["output_schema"] = {"type": "object", "properties": {"n": {"type": 5}}}
    issue = only_issue(data)
    assert issue.path == "columns[3] (facts).output_schema.properties.n.type"
    assert issue.message.startswith("invalid JSON schema")


def test_missing_required_field_lists_what_is_required() -> None:
    data = valid_config()
    del data["columns"][2]["prompt"]
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).prompt"
    assert issue.message == "required field is missing"
    assert issue.hint is not None
    assert "prompt" in issue.hint


def test_unknown_column_type_is_short_and_lists_valid_types() -> None:
    data = valid_config()
    data["columns"][2]["type"] = "llm_txt"
    issues = issues_of(data)
    # The broken column is still known by name: no cascading "unknown column" error.
    assert len(issues) == 1
    (issue,) = issues
    assert issue.path == "columns[2] (summary).type"
    assert issue.message == "unknown column type 'llm_txt'"
    assert issue.hint is not None
    assert "did you mean 'llm_text'" in issue.hint
    assert "llm_judge" in issue.hint


def test_missing_column_type() -> None:
    data = valid_config()
    del data["columns"][1]["type"]
    issue = only_issue(data)
    assert issue.path == "columns[1] (title).type"
    assert issue.message == "missing 'type'"


def test_unknown_field_suggests_close_match() -> None:
    data = valid_config()
    data["columns"][2]["promt"] = "typo"
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).promt"
    assert issue.message == "unknown field 'promt'"
    assert issue.hint is not None
    assert "did you mean 'prompt'" in issue.hint


def test_unknown_sampler_kind() -> None:
    data = valid_config()
    data["columns"][0]["sampler"] = {"kind": "gausian"}
    issue = only_issue(data)
    assert issue.path == "columns[0] (topic).sampler.kind"
    assert issue.hint is not None
    assert "did you mean 'gaussian'" in issue.hint


def test_template_syntax_error_names_field_and_line() -> None:
    data = valid_config()
    data["columns"][1]["template"] = "line one\n{{ topic }"
    issue = only_issue(data)
    assert issue.path == "columns[1] (title).template"
    assert "syntax error at line 2" in issue.message


def test_duplicate_column_names() -> None:
    data = valid_config()
    data["columns"].append({"name": "title", "type": "expression", "template": "x"})
    issue = only_issue(data)
    assert issue.path == "columns[4] (title).name"
    assert "columns[1] (title)" in issue.message


def test_side_column_colliding_with_a_column_name() -> None:
    data = valid_config()
    data["columns"][2]["reasoning_column"] = "title"
    issue = only_issue(data)
    assert "'title' is also produced by columns[1] (title)" in issue.message


def test_literal_api_key_is_rejected_with_a_hint() -> None:
    data = valid_config()
    data["providers"].append(
        {"name": "openai", "type": "openai", "api_key_env": "sk-proj-abc123def456"}
    )
    issue = only_issue(data)
    assert issue.path == "providers[1] (openai).api_key_env"
    assert "literal API key" in issue.message
    assert issue.hint is not None
    assert "api_key_env: OPENAI_API_KEY" in issue.hint
    assert "sk-proj" not in issue.render()  # the secret is never echoed


def test_simulation_settings_on_a_non_simulated_provider() -> None:
    data = valid_config()
    data["providers"].append(
        {"name": "remote", "type": "openai", "simulation": {"latency_seconds": 1.0}}
    )
    issue = only_issue(data)
    assert issue.path == "providers[1] (remote)"
    assert "only apply to providers of type 'simulated'" in issue.message


def test_all_errors_are_reported_at_once() -> None:
    data = valid_config()
    data["run"]["num_records"] = "abc"  # structural
    data["columns"][2]["model"] = "writter"  # unknown alias
    data["columns"][1]["template"] = "About {{ topik }}"  # unknown column
    issues = issues_of(data)
    assert sorted(issue.path for issue in issues) == [
        "columns[1] (title).template",
        "columns[2] (summary).model",
        "run.num_records",
    ]


def test_format_issues_gives_one_line_per_issue_with_the_source() -> None:
    data = valid_config()
    data["run"]["num_records"] = 0
    data["columns"][2]["model"] = "nope"
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data, source="dataset.yaml")
    lines = format_issues(excinfo.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("dataset.yaml: ") for line in lines)
    assert "run.num_records" in lines[0]


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(["not", "a", "mapping"])
    assert "must be a mapping" in excinfo.value.issues[0].message


def test_unchanged_input_is_not_mutated() -> None:
    data = valid_config()
    snapshot = copy.deepcopy(data)
    parse_config(data)
    assert data == snapshot


def test_hints_list_at_most_a_dozen_known_names() -> None:
    data = valid_config()
    data["columns"].extend(
        {"name": f"c{i}", "type": "sampler", "sampler": {"kind": "uuid"}} for i in range(20)
    )
    data["columns"][1]["template"] = "{{ zzz }}"
    issue = only_issue(data)
    assert issue.hint is not None
    assert issue.hint.endswith("... (12 more)")  # 24 columns, 12 listed


# -- entries that fail to parse still count as defined ------------------------------------


def test_a_model_entry_that_fails_to_parse_is_still_known_to_the_columns_using_it() -> None:
    data = valid_config()
    data["models"][0]["max_paralel_requests"] = 3
    data["columns"].append(
        {"name": "other", "type": "llm_text", "model": "writr", "prompt": "Hi {{ topic }}"}
    )
    issues = issues_of(data)
    assert [issue.path for issue in issues] == [
        "models[0] (writer).max_paralel_requests",
        "columns[4] (other).model",
    ]
    typo = issues[1]
    assert typo.message == "unknown model alias 'writr'"
    assert typo.hint is not None
    assert "did you mean 'writer'" in typo.hint
    assert "no models are defined" not in typo.hint


def test_a_provider_entry_that_fails_to_parse_is_offered_as_a_close_match() -> None:
    data = valid_config()
    data["providers"][0]["bse_url"] = "http://localhost:1"
    data["models"].append({"alias": "judge", "provider": "locl", "model": "sim-chat"})
    issues = issues_of(data)
    assert [issue.path for issue in issues] == [
        "providers[0] (local).bse_url",
        "models[1] (judge).provider",
    ]
    assert issues[1].hint is not None
    assert "did you mean 'local'" in issues[1].hint


def test_a_column_whose_sampler_fails_to_parse_stays_in_did_you_mean_lists() -> None:
    data = valid_config()
    data["columns"][0]["sampler"]["kind"] = "categroy"
    data["columns"][1]["template"] = "About {{ topc }}"
    data["columns"][1]["depends_on"] = ["topik"]
    issues = issues_of(data)
    assert [issue.path for issue in issues] == [
        "columns[0] (topic).sampler.kind",
        "columns[1] (title).template",
        "columns[1] (title).depends_on",
    ]
    for issue in issues[1:]:
        assert issue.hint is not None
        assert "did you mean 'topic'" in issue.hint, issue.render()


def test_skip_when_written_as_a_template_says_to_drop_the_braces() -> None:
    data = valid_config()
    data["columns"][2]["skip_when"] = "{{ topic == 'tea' }}"
    issue = only_issue(data)
    assert issue.path == "columns[2] (summary).skip_when"
    assert issue.message.startswith("skip_when takes an expression without `{{ }}`")
    assert issue.hint == "drop the delimiters: `skip_when: \"topic == 'tea'\"`"


def test_skip_when_with_a_block_tag_is_the_same_mistake() -> None:
    data = valid_config()
    data["columns"][2]["skip_when"] = "{% if topic %}1{% endif %}"
    issue = only_issue(data)
    assert issue.message.startswith("skip_when takes an expression without `{{ }}`")
    assert issue.hint == "drop the delimiters: `skip_when: \"language == 'fr'\"`"


def test_an_embedding_column_on_an_anthropic_provider_is_a_config_error() -> None:
    data = valid_config()
    data["providers"].append({"name": "claude", "type": "anthropic"})
    data["models"].append({"alias": "vectors", "provider": "claude", "model": "some-model"})
    data["columns"].append(
        {"name": "vec", "type": "embedding", "model": "vectors", "input": "{{ title }}"}
    )
    issue = only_issue(data)
    assert issue.path == "columns[4] (vec).model"
    assert issue.message == (
        "model alias 'vectors' is served by provider 'claude' of type 'anthropic', "
        "which has no embeddings endpoint"
    )
    assert issue.hint is not None
    assert "'openai'" in issue.hint


def test_an_embedding_column_on_an_openai_or_simulated_provider_is_valid() -> None:
    data = valid_config()
    data["providers"].append({"name": "oai", "type": "openai"})
    data["models"].append({"alias": "vectors", "provider": "oai", "model": "text-embedding"})
    data["columns"].append(
        {"name": "vec", "type": "embedding", "model": "vectors", "input": "{{ title }}"}
    )
    data["columns"].append(
        {"name": "vec2", "type": "embedding", "model": "writer", "input": "{{ title }}"}
    )
    config = parse_config(data)
    assert [column.name for column in config.columns][-2:] == ["vec", "vec2"]


def test_the_embedding_check_runs_beside_structural_errors() -> None:
    data = valid_config()
    data["providers"].append({"name": "claude", "type": "anthropic"})
    data["models"].append({"alias": "vectors", "provider": "claude", "model": "some-model"})
    data["columns"].append(
        {"name": "vec", "type": "embedding", "model": "vectors", "input": "{{ title }}"}
    )
    data["run"]["num_records"] = 0
    issues = issues_of(data)
    assert [issue.path for issue in issues] == ["run.num_records", "columns[4] (vec).model"]
