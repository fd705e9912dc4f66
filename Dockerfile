# A worker image: `hpo launch` against the storage named by HPO_STORAGE.
# The CUDA build of torch comes from the base image; pip keeps it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY objectives ./objectives
COPY studies ./studies
RUN pip install --no-cache-dir -e ".[postgres,demo]"

# Model and dataset downloads land here; mount a volume to share them between workers.
ENV HF_HOME=/cache/huggingface HPO_CACHE_DIR=/cache/hpo
ENTRYPOINT ["hpo"]
CMD ["launch", "studies/demo.yaml"]
