"""TensorBoard event files read back (TFRecord framing, tensorboardX's protos)."""

import glob
import io
import os
import struct

import numpy as np


def read_events(directory):
  """-> ({(tag, step): scalar}, {(tag, step): uint8 image}, [session-log start steps])
  of every event file in `directory`."""
  from PIL import Image
  from tensorboardX.proto import event_pb2
  scalars, images, starts = {}, {}, []
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):   # length (8), its crc (4), the event, its crc (4)
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        starts.append(event.step)
      for value in event.summary.value:
        if value.HasField("image"):
          images[value.tag, event.step] = np.asarray(Image.open(io.BytesIO(
              value.image.encoded_image_string)).convert("RGB"))
        else:
          scalars[value.tag, event.step] = value.simple_value
  return scalars, images, starts
