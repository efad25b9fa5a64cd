# GPU image: the CUDA devel base provides nvcc so the custom kernels compile on first use.
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_EXTENSIONS_DIR=/cache/torch_extensions \
    DNNLIB_CACHE_DIR=/cache/dnnlib

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev python3-pip build-essential git ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python

WORKDIR /workspace
COPY requirements.txt /tmp/requirements.txt
RUN python -m pip install --upgrade pip \
    && python -m pip install torch \
    && python -m pip install -r /tmp/requirements.txt tensorboard

COPY . /workspace
CMD ["python", "train.py", "--help"]
