"""pod_monitor: the ContainerSource that watches executor pods and emits what became of them.

Not an HTTP function: a long-running process. Knative's ContainerSource gives it K_SINK (the
broker) and K_CE_OVERRIDES; locally, run it with K_SINK set to the broker's ingress:

    K_SINK=http://127.0.0.1:8080/execmesh/default python functions/pod_monitor/main.py

(or `execmesh pod-monitor`). The work is in execmesh.kube.monitor.
"""

from __future__ import annotations

import sys

from execmesh.kube.monitor import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
