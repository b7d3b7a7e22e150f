"""The README's two set-up commands stay in sync with CI and with the code they call."""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
  return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
  ci = (REPO / ".ci" / "run").read_text()
  command = re.search(r"^TEST_COMMAND='(.*)'$", ci, flags=re.M).group(1)
  blocks = [b.strip() for b in _bash_blocks((REPO / "README.md").read_text())]
  assert command in blocks, "README's test command and .ci/run's TEST_COMMAND differ"
  assert "pytest" in command


def test_quickstart_command_names_real_files():
  blocks = _bash_blocks((REPO / "README.md").read_text())
  quickstart = next(b for b in blocks if "xlm-jax train --config experiments/quickstart.py" in b)
  config = re.search(r"--config (\S+)", quickstart).group(1)
  assert (REPO / config).is_file()
