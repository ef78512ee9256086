"""Snakemake adapter (rule zeroshot_tiles): tile-level zero-shot on the held-out corpus tiles of known class."""

import torch

from slidesnake.data.captions_corpus import read_corpus
from slidesnake.device import inference_context, select_device
from slidesnake.evaluate.vl import tile_zeroshot
from slidesnake.features.encoders import load_encoder
from slidesnake.io.atomic import write_csv
from slidesnake.joblog import setup_job_logging
from slidesnake.models.vl.zeroshot import read_text_bank

setup_job_logging(snakemake.log[0])
device = select_device(snakemake.params.device)
encoder = load_encoder(snakemake.params.encoder, device)
corpus = read_corpus(snakemake.input.corpus)
keep = [m in snakemake.params.magnifications for m in corpus["magnification"]]
tiles = torch.from_numpy(corpus["tiles"][keep])
with inference_context(device):
    features = torch.cat([encoder.encode_image(encoder.preprocess(b)).float().cpu() for b in tiles.split(256)])
table = tile_zeroshot(
    features.numpy(),
    corpus["kind"][keep],
    corpus["magnification"][keep],
    read_text_bank(snakemake.input.text),
    n_bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
)
write_csv(snakemake.output[0], table)
