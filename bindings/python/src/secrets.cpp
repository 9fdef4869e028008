// luksforge.Secret (a wiping, buffer-protocol view of a SecretBuffer) and the secret helpers of secret.hpp.
#include "bindings.hpp"

#include <luksforge/error.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <cstring>

namespace luksforge::python {

void Secret::wipe() noexcept {
    if (buffer.data() != nullptr) explicit_bzero(buffer.data(), buffer.size());
    length = 0;
}

SecretBuffer secret_from(py::handle object, const char* argument) {
    if (py::isinstance<Secret>(object)) {
        const Secret& secret = object.cast<const Secret&>();
        return SecretBuffer(secret.buffer.data(), secret.length);
    }
    if (PyUnicode_Check(object.ptr()))
        throw py::type_error(std::string(argument) +
                             " must be bytes-like (bytes, bytearray, memoryview, luksforge.Secret), not str: "
                             "Python strings cannot be wiped");
    if (!PyObject_CheckBuffer(object.ptr()))
        throw py::type_error(std::string(argument) + " must be bytes-like (bytes, bytearray, memoryview, "
                             "luksforge.Secret), not " + std::string(py::str(object.get_type().attr("__name__"))));
    Py_buffer view;
    if (PyObject_GetBuffer(object.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
    SecretBuffer copy(view.buf, static_cast<std::size_t>(view.len));
    PyBuffer_Release(&view);
    return copy;
}

std::optional<SecretBuffer> optional_secret_from(py::handle object, const char* argument) {
    if (object.is_none()) return std::nullopt;
    return secret_from(object, argument);
}

std::vector<SecretBuffer> secrets_from(py::handle object, const char* argument) {
    std::vector<SecretBuffer> secrets;
    if (py::isinstance<Secret>(object) || PyObject_CheckBuffer(object.ptr()) || PyUnicode_Check(object.ptr())) {
        secrets.push_back(secret_from(object, argument));
        return secrets;
    }
    for (py::handle item : py::iter(object)) secrets.push_back(secret_from(item, argument));
    return secrets;
}

std::string json_text(py::handle object, const char* argument) {
    if (PyUnicode_Check(object.ptr())) return object.cast<std::string>();
    if (PyBytes_Check(object.ptr())) return object.cast<std::string>();
    try {
        return py::module_::import("json").attr("dumps")(object).cast<std::string>();
    } catch (py::error_already_set& e) {
        throw py::type_error(std::string(argument) + " must be JSON text or a JSON-serialisable object: " + e.what());
    }
}

py::object json_loads(std::string_view text) {
    return py::module_::import("json").attr("loads")(py::str(text.data(), text.size()));
}

void CallbackRelay::rethrow_if_failed() {
    if (error_) {
        std::exception_ptr error = std::move(error_);
        error_ = nullptr;
        std::rethrow_exception(error);
    }
}

void register_secrets(py::module_& m) {
    using namespace pybind11::literals;
    static const std::uint8_t empty_byte = 0;

    py::class_<Secret>(m, "Secret", py::buffer_protocol(), R"doc(
A secret (passphrase, key, recovered Clevis secret) held in locked, wiped memory.

Read it through the buffer protocol (``bytes(s)``, ``memoryview(s)``) only where it must leave; ``wipe()`` or
leaving a ``with`` block zeroes it at once, and it is always wiped when collected. Its repr never shows the
content, it cannot be pickled, and it compares in constant time.)doc")
        .def(py::init([](py::handle data) { return Secret(secret_from(data, "data")); }), "data"_a,
             "Copy a bytes-like object into a new Secret (wiping the original is up to the caller).")
        .def_buffer([](Secret& s) {
            void* data = s.length ? static_cast<void*>(s.buffer.data())
                                  : const_cast<std::uint8_t*>(&empty_byte);
            return py::buffer_info(data, 1, py::format_descriptor<std::uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(s.length)}, {1}, /*readonly=*/true);
        })
        .def("wipe", &Secret::wipe, "Zero the secret now; it is empty afterwards.")
        .def_property_readonly("wiped", [](const Secret& s) { return s.length == 0 && s.buffer.size() != 0; },
                               "True once wipe() ran on a non-empty secret.")
        .def_property_readonly("locked", [](const Secret& s) { return s.buffer.locked(); },
                               "Whether mlock() kept the memory out of swap.")
        .def("__len__", [](const Secret& s) { return s.length; })
        .def("__bool__", [](const Secret& s) { return s.length != 0; })
        .def("__repr__", [](const Secret& s) {
            return s.length == 0 && s.buffer.size() != 0 ? std::string("<luksforge.Secret wiped>")
                                                          : "<luksforge.Secret " + std::to_string(s.length) + " bytes>";
        })
        .def("__eq__", [](const Secret& s, py::handle other) -> py::object {
            if (!py::isinstance<Secret>(other) && !PyObject_CheckBuffer(other.ptr())) return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            SecretBuffer theirs = secret_from(other, "other");
            return py::bool_(theirs.size() == s.length && theirs.equals(s.bytes()));
        }, py::is_operator())
        .def("__ne__", [](const Secret& s, py::handle other) -> py::object {
            if (!py::isinstance<Secret>(other) && !PyObject_CheckBuffer(other.ptr())) return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            SecretBuffer theirs = secret_from(other, "other");
            return py::bool_(!(theirs.size() == s.length && theirs.equals(s.bytes())));
        }, py::is_operator())
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](Secret& s, py::args) { s.wipe(); return false; })
        .def("__reduce__", [](const Secret&) -> py::object {
            throw py::type_error("luksforge.Secret cannot be pickled");
        });
    // Mutable and secret: not hashable (a hash would also leak a function of the content).
    m.attr("Secret").attr("__hash__") = py::none();

    m.def("random_secret", [](std::size_t size) { return Secret(random_secret(size)); }, "size"_a,
          "`size` bytes from the kernel CSPRNG (getrandom).");
    m.def("generate_passphrase", [](std::size_t entropy_bits) { return Secret(generate_passphrase(entropy_bits)); },
          "entropy_bits"_a = 256, "A printable (base64url) random passphrase with at least `entropy_bits` of entropy.");
    m.def("read_secret_file", [](const std::filesystem::path& path, std::size_t max_size) {
              return Secret(read_secret_file(path, max_size));
          }, "path"_a, "max_size"_a = 8192 * 1024,
          "Read a secret exactly as cryptsetup's --key-file does (every byte, trailing newline included).");
    m.def("write_secret_file", [](const std::filesystem::path& path, py::handle secret, bool overwrite) {
              SecretBuffer copy = secret_from(secret, "secret");
              write_secret_file(path, copy.bytes(), overwrite);
          }, "path"_a, "secret"_a, py::kw_only(), "overwrite"_a = false,
          "Write a secret to a new file created with mode 0600.");
    m.def("base64url_encode", [](py::handle data) {
              SecretBuffer copy = secret_from(data, "data");
              return Secret(base64url_encode(copy.bytes()));
          }, "data"_a, "Base64url without padding, as JOSE and Clevis use it (the result stays a Secret).");
    m.def("base64url_decode", [](py::handle text) {
              SecretBuffer copy = PyUnicode_Check(text.ptr()) ? SecretBuffer::copy_of(text.cast<std::string>())
                                                              : secret_from(text, "text");
              return Secret(base64url_decode(copy.view()));
          }, "text"_a, "Decode base64url (padding optional); raises FormatError on bad input.");
}

}  // namespace luksforge::python
