"""The smallest gpuhub job: say where it runs and which GPUs it sees."""

import os
import shutil
import socket
import subprocess


def gpus() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return "; ".join(out.split("\n")).strip("; ") or "none"
    return "none"


if __name__ == "__main__":
    print(f"hello from {socket.gethostname()} (site {os.environ.get('GPUHUB_SITE', '?')}, "
          f"job {os.environ.get('GPUHUB_JOB_NAME', '?')})")
    print(f"GPUs visible: {gpus()}")
