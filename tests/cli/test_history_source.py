"""The --prometheus flags and PREWARM_PROMETHEUS_* variables shared by serve and forecast explain."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from prewarm.cli import history_source
from prewarm.core import targets
from prewarm.service import history


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    history_source.add_prometheus_arguments(parser)
    return parser.parse_args(argv)


def test_flags_win_over_the_environment_and_the_token_is_read_from_its_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"PREWARM_PROMETHEUS_URL": "http://env:9090", "PREWARM_PROMETHEUS_TOKEN": "from-env"}
    flags = parse(
        ["--prometheus", "https://flag:9090", "--prometheus-token-file", str(token), "--prometheus-ca", str(ca)]
    )
    assert history_source.prometheus_settings(flags, env) == history.PrometheusSettings(
        url="https://flag:9090", token="s3cret", ca_file=ca
    )
    assert history_source.prometheus_settings(
        parse([]), env | {"PREWARM_PROMETHEUS_COVERAGE": 'up{job="kubernetes-pods"}'}
    ) == history.PrometheusSettings(url="http://env:9090", token="from-env", coverage='up{job="kubernetes-pods"}')
    assert history_source.prometheus_settings(parse([]), {}) is None


def test_every_bad_setting_in_one_error(tmp_path: Path) -> None:
    flags = parse(
        [
            "--prometheus",
            "prometheus:9090",
            "--prometheus-token-file",
            str(tmp_path / "missing"),
            "--prometheus-ca",
            str(tmp_path),
            "--prometheus-coverage",
            "up[5m]",
        ]
    )
    with pytest.raises(targets.ConfigError) as caught:
        history_source.prometheus_settings(flags, {})
    assert [str(p) for p in caught.value.problems] == [
        f"--prometheus-token-file: '{tmp_path / 'missing'}' cannot be read: No such file or directory",
        f"--prometheus-ca: '{tmp_path}' is not a file",
        "--prometheus-coverage: 'up[5m]' is not a series selector such as up{job=\"x\"}",
        "--prometheus: 'prometheus:9090' is not an http:// or https:// URL",
    ]
