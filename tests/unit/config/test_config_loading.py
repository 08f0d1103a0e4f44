"""Loading configs from files: formats, file-level errors with lines, and round trips."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sluiceway.config import (
    DatasetConfig,
    LLMStructuredColumnConfig,
    config_to_dict,
    config_to_yaml,
    dump_config,
    load_config,
)
from sluiceway.errors import ConfigError

EXAMPLE_YAML = textwrap.dedent(
    """\
    providers:
      - name: local
        type: simulated
        simulation: {latency_seconds: 0.05, capacity: 8}
      - name: remote
        type: openai
        base_url: http://localhost:8000/v1
        api_key_env: VLLM_API_KEY
    models:
      - alias: writer
        provider: local
        model: sim-chat
        max_parallel_requests: 8
        parameters: {temperature: 0.7}
    columns:
      - name: language
        type: sampler
        sampler: {kind: category, values: [en, fr], weights: [3, 1]}
      - name: signup
        type: sampler
        sampler: {kind: datetime, start: 2024-01-01, end: 2024-06-30}
      - name: person
        type: sampler
        sampler: {kind: person, field: first_name}
      - name: greeting
        type: expression
        template: "Hello {{ person }}"
      - name: story
        type: llm_text
        model: writer
        prompt: "Write about {{ greeting }} in {{ language }}"
        skip_when: "language == 'fr'"
        skip_value: ""
        reasoning_column: story_trace
      - name: facts
        type: llm_structured
        model: writer
        prompt: "Facts from {{ story }}"
        output_schema:
          type: object
          properties: {count: {type: integer}}
          required: [count]
      - name: grade
        type: llm_judge
        model: writer
        prompt: "Grade {{ story }} using {{ story_trace }}"
        rubrics:
          - {name: clarity, description: "Is it clear?"}
      - name: vector
        type: embedding
        model: writer
        input: "{{ story }}"
        drop: true
      - name: enriched
        type: custom
        function: json:dumps
        strategy: batch
        models: [writer]
        output_columns: [extra_a, extra_b]
        depends_on: [facts]
    run:
      num_records: 20
      seed: 7
      buffer_size: 5
    output:
      path: out/stories
    """
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_yaml_example(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "dataset.yaml", EXAMPLE_YAML))
    assert config.run.seed == 7
    assert config.provider("local").simulation.capacity == 8
    assert config.model("writer").parameters == {"temperature": 0.7}
    assert config.column("story").produced_columns() == ("story", "story_trace")
    assert config.output.path == "out/stories"


def test_yaml_round_trip_gives_an_equal_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "dataset.yaml", EXAMPLE_YAML))
    reloaded = load_config(dump_config(config, tmp_path / "again.yml"))
    assert reloaded == config
    assert config_to_yaml(reloaded) == config_to_yaml(config)


def test_json_round_trip_gives_an_equal_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "dataset.yaml", EXAMPLE_YAML))
    path = dump_config(config, tmp_path / "dataset.json")
    assert json.loads(path.read_text(encoding="utf-8")) == config_to_dict(config)
    assert load_config(path) == config


def test_structured_column_keeps_its_schema(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "dataset.yaml", EXAMPLE_YAML))
    facts = config.column("facts")
    assert isinstance(facts, LLMStructuredColumnConfig)
    assert facts.output_schema["required"] == ["count"]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing)
    (issue,) = excinfo.value.issues
    assert issue.path == str(missing)
    assert issue.message == "config file not found"
    assert excinfo.value.source == str(missing)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "run:\n  num_records: 3\ncolumns: [\n  {name: a\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    (issue,) = excinfo.value.issues
    assert issue.path.startswith(f"{path}:")
    assert "invalid YAML at line" in issue.message


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{\n  "run": {"num_records": 3},\n  "columns": [,]\n}')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    (issue,) = excinfo.value.issues
    assert issue.path == f"{path}:3"
    assert "invalid JSON at line 3" in issue.message


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unsupported config file extension '\.toml'"):
        load_config(write(tmp_path, "dataset.toml", ""))


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="got an empty document"):
        load_config(write(tmp_path, "empty.yaml", ""))


def test_validation_errors_carry_the_file_as_source(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", EXAMPLE_YAML.replace("seed: 7", "seed: seven"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.source == str(path)
    assert [issue.path for issue in excinfo.value.issues] == ["run.seed"]
    assert str(path) in str(excinfo.value)


def test_semantic_errors_carry_the_file_as_source(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", EXAMPLE_YAML.replace("{{ greeting }}", "{{ greting }}"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.source == str(path)
    assert [issue.path for issue in excinfo.value.issues] == ["columns[4] (story).prompt"]


def test_python_construction_runs_semantic_checks_too() -> None:
    data = {
        "columns": [{"name": "a", "type": "expression", "template": "{{ b }}"}],
        "run": {"num_records": 1},
    }
    with pytest.raises(ConfigError, match="unknown column 'b'"):
        DatasetConfig.model_validate(data)
