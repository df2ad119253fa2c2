"""Default experiment: offline synthetic moving-shapes videos, small frame CNN.

Hardware: any machine; sized for a 2-core CPU (a few minutes). Devices: every
stage on the default device (set `config.devices` to one device per module,
e.g. ["/GPU:0", "/GPU:1", "/GPU:2", "/GPU:3"], to run the modules in parallel).

Run:  bin/train                      (Sideways)
      bin/train --config.algorithm=bp
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Every config key with its default, in one piece on purpose: the one
  place defaults are written (configs build on it; `with_defaults` fills a
  partial config or an older run's config.json from it)."""
  config = ml_collections.ConfigDict()
  config.experiment = "default"
  config.seed = 0
  config.algorithm = "sideways"  # or "bp", "gpipe" (exact, pipelined)

  # Data: see sideways_tf/data. Elements are {"video": [B,T,H,W,C] float32 in
  # [0, 1], "label": [B] int32}.
  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"
  config.data.label_key = "appearance"  # synthetic only: or "motion"
  config.data.num_frames = 16
  config.data.image_size = 32
  config.data.num_classes = 4
  config.data.speed = 1.0  # pixels per frame: how smooth the video is
  config.data.noise = 0.05
  config.data.num_distractors = 0
  config.data.num_train = 1024
  config.data.num_test = 256
  config.data.temporal_stride = 1
  config.data.data_dir = ""  # "" = <project>/data_cache
  config.data.seed = 0  # synthetic only: generation seed (not the data order)
  config.data.num_shapes = 4  # synthetic, label_key="motion": shapes drawn
  config.data.num_directions = 4  # synthetic, label_key="appearance": 4 or 8
  # Clip sampling and augmentation (sideways_tf/data/clips.py).
  config.data.crop_fraction = 1.0  # crop side / short side (random in train)
  config.data.random_flip = False  # a flip would swap left/right motion
  config.data.short_video = "loop"  # or "pad", "drop"
  config.data.eval_clips = 1  # clips per eval video, spread evenly
  config.data.shuffle_buffer = 0  # 0 = the source's default
  # Other sources: name="tfds" (e.g. tfds_name="ucf101") or "video_folder"
  # (path = an output_dir of bin/prepare_videos). See docs/data.md.
  config.data.path = ""
  config.data.tfds_name = ""
  config.data.video_key = "video"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.tfds_download = False  # True: a first run may download (tfds)

  # Model: a frame CNN cut into Sideways modules.
  config.model = ml_collections.ConfigDict()
  config.model.name = "frame_cnn"
  # An int, or "auto": one module per device of config.devices (without
  # devices: the model's own number), cut by measured time at start-up
  # (sideways_tf/training/auto_balance.py). The field takes either type.
  config.model.num_modules = ml_collections.FieldReference(4, field_type=object)
  config.model.widths = (16, 32, 64)
  # "time": re-cut the layers into num_modules modules of equal measured
  # tick time at start-up (sideways_tf/training/auto_balance.py); "params":
  # by parameter count; "": the model's own split.
  config.model.balance = ""
  # Temporal variant (docs/models.md): "" = a frame model; "conv:3" = a
  # causal temporal conv over 3 frames after every conv; "shift" = an online
  # temporal shift of 1/8 of the channels ("shift:0.25": a quarter).
  config.model.temporal = ""
  config.devices = ()  # () = default placement; else one device per module
  # ("auto",) = every visible GPU, module k on GPU k*G//L (docs/scaling.md).
  # Data parallel on this machine (docs/scaling.md): R replicas under
  # tf.distribute.MirroredStrategy, each on batch_size / R clips of every
  # batch and on its own group of config.devices (R x devices per replica,
  # replica r the r-th group); one optimizer step with their mean gradient.
  config.replicas = 1
  # Scale-out (docs/scaling.md): True = this process is one worker of the
  # TF_CONFIG cluster (tf.distribute.MultiWorkerMirroredStrategy); clip
  # gradients are averaged across workers, train.batch_size is per worker.
  config.distributed = False
  config.collective_timeout_seconds = 300.0  # bound on one all-reduce
  # Bound on waiting for every worker to start (0 = forever); then the
  # workers that never started are named.
  config.start_timeout_seconds = 600.0
  # "" (float32), "mixed_bfloat16", or "mixed_float16" (with dynamic loss
  # scaling). Keras computes in 16 bits, keeps float32 weights.
  config.mixed_precision = ""
  # Skip-Sideways (docs/skip_sideways.md): "2:0" = stage 2 also receives
  # stage 0's output of the previous tick; "" = plain Sideways.
  config.skips = ""
  config.skip_combine = "concat"  # or "add"
  # True: hold each skip k-j ticks so stage k joins stage j's output of the
  # same frame as its main input (frame-wise: no motion); False: the newer
  # frame of the previous tick (docs/skip_sideways.md).
  config.skip_align = False
  # Replay (docs/fidelity.md): the bottom N modules keep their last 2(L-k)
  # inputs and take their backward step at the input their gradient belongs
  # to; one extra forward of each such module per tick (with skips, one per
  # path lag: replay every module below the top or none, see
  # docs/skip_sideways.md), memory still flat in T. 0 = plain Sideways.
  # "auto": at start-up, replay the bottom modules whose input changes by
  # more than the risk threshold over their lag on the first training
  # batches (sideways_tf/training/auto_replay.py); saved with the run.
  config.replay_modules = ml_collections.FieldReference(0, field_type=object)
  # algorithm="gpipe" (sideways_tf/engine/gpipe.py): BP's exact gradient
  # pipelined over the module devices, the clip's frames as micro-batches.
  config.gpipe = ml_collections.ConfigDict()
  config.gpipe.micro_batch_frames = 1  # frames per micro-batch; divides T
  config.gpipe.rematerialize = False  # keep stage inputs only, recompute
  # algorithm="bp" (sideways_tf/engine/bp.py): 0 = all B*T frames in one
  # pass; N = BP's same gradient accumulated over N-frame chunks, memory
  # flat in T (one chunk's activations at a time).
  config.bp_chunk_frames = 0

  # Optimisation: one optimizer step per clip unless update_every_ticks > 0.
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8
  config.train.num_steps = 1000
  config.train.optimizer = "adam"
  config.train.learning_rate = 1e-3
  config.train.update_every_ticks = 0
  config.train.log_every = 50
  config.train.eval_every = 100  # 10 points on the eval charts
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 3
  config.train.fidelity_every = 100  # Sideways-vs-BP gradient cosine; 0 = off
  config.train.stage_time_every = 100  # per-module tick time; 0 = off

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 16
  config.eval.num_batches = 0  # 0 = the whole eval split
  return config
