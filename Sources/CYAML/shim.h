// libyaml 0.2.5 (Debian libyaml-dev, pkg-config yaml-0.1): the event parser and emitter MeshYAML drives.
#include <yaml.h>
