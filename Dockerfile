# GPU image. The custom kernels compile on first use with the image's nvcc, and PyTorch refuses to build them
# unless nvcc's CUDA major version equals the one PyTorch was built with: the CUDA 13.0 toolkit here matches the
# CUDA 13.0 wheel of the pinned torch. Change both together (the check below stops a mismatched build).
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    TORCH_EXTENSIONS_DIR=/cache/torch_extensions \
    DNNLIB_CACHE_DIR=/cache/dnnlib

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv build-essential git ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /workspace
COPY requirements.txt /tmp/requirements.txt
RUN python -m pip install --upgrade pip \
    && python -m pip install torch==2.14.1 \
    && python -m pip install -r /tmp/requirements.txt tensorboard \
    && python -c "import torch; assert torch.version.cuda.split('.')[0] == '13', torch.version.cuda"

COPY . /workspace
CMD ["python", "train.py", "--help"]
