"""What the lab supervisor and the lab client both read from a labgrid client session (.venv-lab)."""

# The resource names of a pen's place (docs/lab.md): its serial port, and its bench rig if it has one.
PEN_RESOURCE = "pen"
RIG_RESOURCE = "rig"


def place_resources(session, place):
    """{resource name: ResourceEntry} of the resources this place matches (acquired or not)."""
    found = {}
    for exporter, groups in session.resources.items():
        for group_name, group in groups.items():
            for resource_name, resource in group.items():
                if not resource.data.get("cls"):
                    continue                       # deleted by its exporter
                if place.hasmatch((exporter, group_name, resource.cls, resource_name)):
                    found[resource_name] = resource
    return found


def offline_reason(session, place):
    """None when the place is online (it matches resources and all are available), else why not."""
    resources = place_resources(session, place)
    if not resources:
        return "no resource matches the place (is its exporter running?)"
    missing = sorted(name for name, resource in resources.items() if not resource.avail)
    if missing:
        return "resource%s %s unavailable" % ("s" if len(missing) > 1 else "", ", ".join(missing))
    return None
