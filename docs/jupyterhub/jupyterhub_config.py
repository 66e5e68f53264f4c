# JupyterHub for the CI/CD for Models course: local Unix users, one server each
# (LocalProcessSpawner), and nbgrader's shared exchange. See docs/deploy-jupyterhub.md.
#
# Copy this file to /etc/jupyterhub/jupyterhub_config.py and set the values below, or set the
# environment variables named here before starting the hub. The test suite starts a real hub
# from this very file (tests/test_jupyterhub.py), so what it says is what was tested.
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by traitlets when JupyterHub loads this file


def _names(variable: str, default: str = "") -> set[str]:
    return set(os.environ.get(variable, default).split())


COURSE_ID = "cicd-for-models"
# The exchange: one folder on a file system every user's server can reach (see the guide for
# its permissions). Learners write only to its inbound folder; nbgrader gives that folder no
# read permission for them, so nobody can list another learner's submission.
EXCHANGE = os.environ.get("CICD_HUB_EXCHANGE", "/srv/nbgrader/exchange")
INSTRUCTORS = _names("CICD_HUB_INSTRUCTORS", "instructor")
LEARNERS = _names("CICD_HUB_LEARNERS")
# Configuration folders for the two kinds of user (docs/deploy-jupyterhub.md shows their files).
LEARNER_CONFIG = os.environ.get("CICD_HUB_LEARNER_CONFIG", "/etc/jupyter/cicd-learner")
INSTRUCTOR_CONFIG = os.environ.get("CICD_HUB_INSTRUCTOR_CONFIG", "/etc/jupyter/cicd-instructor")
# Every user's server runs from the hub's own environment, which must be readable by all users:
# build it from the system Python (e.g. /usr/bin/python3 -m venv /opt/cicd-course/venv), never
# from a Python inside an administrator's home folder.
ENV_BIN = Path(sys.executable).parent

c.JupyterHub.bind_url = os.environ.get("CICD_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_bind_url = os.environ.get("CICD_HUB_INTERNAL_URL", "http://127.0.0.1:8081")
c.ConfigurableHTTPProxy.api_url = os.environ.get("CICD_HUB_PROXY_API_URL", "http://127.0.0.1:8001")

# Who may log in. PAM (the default) checks Unix passwords; `admin_users` stays empty because
# grading needs no hub admin: the instructor grades from their own account.
c.Authenticator.allowed_users = INSTRUCTORS | LEARNERS
c.JupyterHub.load_groups = {
    "instructors": {"users": sorted(INSTRUCTORS)},
    "learners": {"users": sorted(LEARNERS)},
}

c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(ENV_BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
# Learners' servers: nbgrader's Assignment List, no Formgrader, no assignment editor.
c.Spawner.environment = {"JUPYTER_CONFIG_PATH": LEARNER_CONFIG,
                         "PATH": f"{ENV_BIN}:/usr/local/bin:/usr/bin:/bin"}
# Instructors' servers: the Formgrader too, started in the course repository (the Formgrader
# reads nbgrader_config.py from the server's root), and the class folder from the environment.
c.Spawner.group_overrides = {
    "1-instructors": {
        "groups": ["instructors"],
        "spawner_override": {
            "environment": {"JUPYTER_CONFIG_PATH": INSTRUCTOR_CONFIG,
                            "PATH": f"{ENV_BIN}:/usr/local/bin:/usr/bin:/bin",
                            "CICD_EXCHANGE": EXCHANGE,
                            "CICD_CLASS_DIR": os.environ.get("CICD_HUB_CLASS_DIR", "/srv/cicd-course/class")},
            "notebook_dir": os.environ.get("CICD_HUB_COURSE_REPO", "/srv/cicd-course/repo"),
        },
    },
}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
