// The `_luksforge` extension: one registration function per library area (see bindings.hpp). The package
// `luksforge` (luksforge/__init__.py) re-exports it.
#include "bindings.hpp"

PYBIND11_MODULE(_luksforge, m) {
    using namespace luksforge::python;
#if PY_VERSION_HEX < 0x03070000
    // Python 3.6 (RHEL 8) creates the GIL only when a thread starts; until then acquiring it after a
    // gil_scoped_release (progress callbacks during re-key) waits forever. 3.7+ always has it.
    PyEval_InitThreads();
#endif
    m.doc() = "luksforge: NBDE-ready LUKS2 images — unique volume keys and Clevis (tang, sss) bindings.";
    m.attr("__version__") = LUKSFORGE_VERSION;
    register_errors(m);
    register_secrets(m);
    register_luks(m);
    register_pins(m);
    register_tang(m);
    register_clevis(m);
    register_policy(m);
    register_image(m);
    register_ledger(m);
    register_pipeline(m);
}
