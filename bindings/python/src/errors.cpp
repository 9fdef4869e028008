// luksforge.Error and its subclasses, mirroring luksforge/error.hpp; every exception keeps the errno value.
#include "bindings.hpp"

#include <luksforge/error.hpp>
#include <luksforge/ledger.hpp>

#include <filesystem>

namespace luksforge::python {
namespace {

// Created once at import; the module keeps them alive for the life of the interpreter.
PyObject* error_type = nullptr;
PyObject* auth_error_type = nullptr;
PyObject* not_found_error_type = nullptr;
PyObject* busy_error_type = nullptr;
PyObject* tang_error_type = nullptr;
PyObject* format_error_type = nullptr;
PyObject* limit_error_type = nullptr;
PyObject* pcr_mismatch_error_type = nullptr;
PyObject* tpm_error_type = nullptr;

PyObject* new_exception_type(py::module_& m, const char* name, PyObject* base, const char* doc) {
    std::string qualified = std::string("luksforge.") + name;
    PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, base, nullptr);
    if (type == nullptr) throw py::error_already_set();
    m.add_object(name, py::reinterpret_borrow<py::object>(type));
    return type;
}

void raise(PyObject* type, const std::system_error& e) {
    py::object instance = py::reinterpret_borrow<py::object>(type)(py::str(e.what()));
    instance.attr("errno") = e.code().value();
    PyErr_SetObject(type, instance.ptr());
}

}  // namespace

void register_errors(py::module_& m) {
    error_type = new_exception_type(m, "Error", PyExc_Exception,
        "Every luksforge failure. `errno` holds the errno-style code (EINVAL, ENOENT, EPERM, EBUSY, ...).");
    PyObject_SetAttrString(error_type, "errno", Py_None);
    auth_error_type = new_exception_type(m, "AuthError", error_type,
        "A passphrase, key or token did not open what it was meant to open.");
    not_found_error_type = new_exception_type(m, "NotFoundError", error_type,
        "A file, device, keyslot, token or Tang key that was asked for does not exist.");
    busy_error_type = new_exception_type(m, "BusyError", error_type,
        "The device is in use or locked by another luksforge process.");
    tang_error_type = new_exception_type(m, "TangError", error_type,
        "Talking to a Tang server failed: refused, timeout, HTTP error, bad or untrusted advertisement.");
    format_error_type = new_exception_type(m, "FormatError", error_type,
        "Input is not in the expected format (not LUKS2, malformed JSON/JWE/TOML, out-of-range option).");
    pcr_mismatch_error_type = new_exception_type(m, "PcrMismatchError", auth_error_type,
        "A tpm2 binding's PCR policy does not hold: a PCR it is sealed to has changed since it was made.");
    tpm_error_type = new_exception_type(m, "TpmError", error_type,
        "The TPM2 cannot be used: none (no /dev/tpmrm*, TPM2TOOLS_TCTI unset), unreachable, or a TPM failure.");
    limit_error_type = new_exception_type(m, "LimitError", error_type,
        "One more instance would exceed the policy's maximum number of images sharing a volume key.");

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const PcrMismatchError& e) {
            raise(pcr_mismatch_error_type, e);
        } catch (const AuthError& e) {
            raise(auth_error_type, e);
        } catch (const TpmError& e) {
            raise(tpm_error_type, e);
        } catch (const NotFoundError& e) {
            raise(not_found_error_type, e);
        } catch (const BusyError& e) {
            raise(busy_error_type, e);
        } catch (const TangError& e) {
            raise(tang_error_type, e);
        } catch (const FormatError& e) {
            raise(format_error_type, e);
        } catch (const LimitError& e) {
            raise(limit_error_type, e);
        } catch (const Error& e) {
            raise(error_type, e);
        } catch (const std::filesystem::filesystem_error& e) {
            // OSError picks the matching subclass (FileNotFoundError, PermissionError, ...) from errno.
            py::object err = py::reinterpret_borrow<py::object>(PyExc_OSError)(
                e.code().value(), e.code().message(), e.path1().string());
            PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
        } catch (const std::system_error& e) {
            raise(error_type, e);
        }
    });
}

}  // namespace luksforge::python
