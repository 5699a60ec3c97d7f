# A first execution: `execmesh run examples/hello.py`
import platform

print(f"hello from execmesh, running Python {platform.python_version()} in a sandbox")
