"""The data flags: `--data-path` with `--split`, the weighted-split groups of the BLOOMZ scripts
(inline and from a file), and clear errors naming the flag."""

from __future__ import annotations

import argparse

import pytest

from megatron.data.data_config import DatasetRange, add_data_args, data_config_from_args


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    return data_config_from_args(parser.parse_args(["--seq-length", "2048", *argv]))


def test_data_path_with_split():
    config = parse("--data-path", "0.3", "data/a", "0.7", "data/b", "--split", "95,5,0")
    assert config.train.datasets == (DatasetRange(0.3, "data/a", 0.0, 0.95), DatasetRange(0.7, "data/b", 0.0, 0.95))
    assert config.valid[0].datasets[1].begin == pytest.approx(0.95) and config.valid[0].datasets[1].end == 1.0
    single = parse("--data-path", "data/a", "--split", "90,10")
    assert single.train.datasets == (DatasetRange(1.0, "data/a", 0.0, 0.9),)


def test_weighted_split_paths_inline_and_from_file(tmp_path):
    train = "train: 0.2 0:0.95 data/xp3_fr, 0.8 0:0.95 data/xp3_en"
    config = parse("--train-weighted-split-paths", train,
                   "--valid-weighted-split-paths", "valid_fr: 1 0.95:1 data/xp3_fr", "valid_en: 1 0.95:1 data/xp3_en")
    assert config.train.name == "train"
    assert config.train.datasets[1] == DatasetRange(0.8, "data/xp3_en", 0.0, 0.95)
    assert [g.name for g in config.valid] == ["valid_fr", "valid_en"]
    paths = tmp_path / "train.txt"
    paths.write_text(f'"{train}"\n')
    from_file = parse("--train-weighted-split-paths-path", str(paths))
    assert from_file.train == config.train


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train-weighted-split-paths", "train 0.2 0:1 data/a"], "not of the form"),
        (["--train-weighted-split-paths", "train: 0.2 0-1 data/a"], "'0.2 0-1 data/a' in group 'train'"),
        (["--train-weighted-split-paths", "train: 0.2 0:1.5 data/a"], "START <= END <= 1"),
        (["--train-weighted-split-paths", "a: 1 0:1 x", "b: 1 0:1 y"], "exactly one group"),
        (["--data-path", "0.3", "data/a", "data/b"], "--data-path"),
        (["--data-path", "data/a", "--split", "ninety"], "--split"),
        ([], "no data"),
        (["--train-weighted-split-paths-path", "/nonexistent/file"], "--train-weighted-split-paths-path"),
    ],
)
def test_errors_name_the_flag(argv, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", "\\(")):
        parse(*argv)
