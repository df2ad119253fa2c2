"""What the generated TFDS sets (moving shapes, moving digits) share.

Each is a builder whose one config is a frozen `Settings` dataclass, made on
first use from nothing that needs a download, cached per settings, prepared
quietly (one line instead of TFDS's download report and nested bars) and
under a file lock, so that runs started together (seeds in parallel) do not
write the same temporary files.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import pathlib

import tensorflow_datasets as tfds
from etils import epath


@dataclasses.dataclass(eq=False)
class SettingsConfig(tfds.core.BuilderConfig):
  settings: object = None

  def __repr__(self):  # TFDS logs it once per load: keep it one short line
    return f"{type(self).__name__}({self.name})"


class GeneratedBuilder(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """A builder of videos; a subclass defines `make_example(split, index)`."""

  TITLE = "the data set"  # for the one line printed while generating

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 derives this through `importlib_resources`, which it does
    # not install on Python >= 3.9; this file is the answer anyway.
    return epath.Path(__file__)

  def __init__(self, *, settings, **kwargs):
    config = SettingsConfig(
        name=settings.config_name,
        description=json.dumps(dataclasses.asdict(settings), sort_keys=True),
        settings=settings)
    super().__init__(config=config, **kwargs)

  @property
  def settings(self):
    return self.builder_config.settings

  # Offline and generated: one line instead of TFDS's "Downloading and
  # preparing dataset Unknown size ..." and its nested progress bars.
  def _log_download_bytes(self) -> None:
    print(f"Generating {self.TITLE} once in {self.data_dir} ...", flush=True)

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train", self.settings.num_train),
            "test": self._generate_examples("test", self.settings.num_test)}

  def _generate_examples(self, split: str, count: int):
    for index in range(count):
      yield index, self.make_example(split, index)


def prepare(builder_class, settings, data_dir):
  """The builder, generating the data set first unless it is cached."""
  from absl import logging as absl_logging  # noqa: PLC0415
  lock_path = (pathlib.Path(data_dir)
               / f".{builder_class.name}-{settings.config_name}.lock")
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  verbosity = absl_logging.get_verbosity()
  if verbosity > absl_logging.ERROR:  # TFDS's "Using custom data config"
    absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    with open(lock_path, "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
      builder = builder_class(settings=settings, data_dir=str(data_dir))
      if not builder.is_prepared():
        from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415
        shown = getattr(tqdm_utils, "_active", True)
        tfds.display_progress_bar(False)  # no nested bars, no [A codes
        try:
          builder.download_and_prepare()
        finally:
          tfds.display_progress_bar(shown)
  finally:
    absl_logging.set_verbosity(verbosity)
  return builder
