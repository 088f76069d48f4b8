# The shipped shapes-video rebuilt from shapes-default and its temporal layers (the device's tree leaves the
# video model's own copy of the image networks behind, for the 64 MiB limit).
import sys, torch
from latentlab.io.checkpoint import read_config, read_safetensors
from latentlab.pipeline import Pipeline
from latentlab.video_pipeline import VideoPipeline
from latentlab.models.video_unet import TemporalConfig as TC
out = sys.argv[1]
pipe = VideoPipeline.from_image(Pipeline.load("shapes-default", device="cpu"), read_config(".device/video-temporal/config.json", TC), frames=16)
pipe.unet.temporal.load_state_dict({k: v.float() for k, v in read_safetensors(".device/video-temporal/model.safetensors").items()})
pipe.save(out, dtype=torch.float16)
