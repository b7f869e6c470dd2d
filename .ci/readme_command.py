"""Print the N-th fenced ``bash`` block of README.md, so CI runs exactly what users read."""

import pathlib
import re
import sys

index = int(sys.argv[1])
readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
blocks = re.findall(r"```bash\n(.*?)\n```", readme.read_text(), flags=re.S)
print(blocks[index].strip())
