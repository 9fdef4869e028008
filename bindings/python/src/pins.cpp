// Clevis pins (pin.hpp): encrypt a secret to a tang/tpm2/sss policy as Clevis's compact JWE, and decrypt it.
#include "bindings.hpp"

#include <luksforge/pin.hpp>

#include <pybind11/stl.h>

namespace luksforge::python {

using namespace pybind11::literals;

NetworkOptions network_options(long connect_timeout_ms, long total_timeout_ms, std::size_t max_response_bytes,
                               bool follow_redirects) {
    NetworkOptions n;
    n.connect_timeout_ms = connect_timeout_ms;
    n.total_timeout_ms = total_timeout_ms;
    n.max_response_bytes = max_response_bytes;
    n.follow_redirects = follow_redirects;
    return n;
}

void register_pins(py::module_& m) {
    const NetworkOptions defaults;
    py::class_<NetworkOptions>(m, "NetworkOptions", "Limits for every HTTP exchange with a Tang server.")
        .def(py::init(&network_options), py::kw_only(), "connect_timeout_ms"_a = defaults.connect_timeout_ms,
             "total_timeout_ms"_a = defaults.total_timeout_ms, "max_response_bytes"_a = defaults.max_response_bytes,
             "follow_redirects"_a = defaults.follow_redirects)
        .def_readwrite("connect_timeout_ms", &NetworkOptions::connect_timeout_ms)
        .def_readwrite("total_timeout_ms", &NetworkOptions::total_timeout_ms)
        .def_readwrite("max_response_bytes", &NetworkOptions::max_response_bytes)
        .def_readwrite("follow_redirects", &NetworkOptions::follow_redirects)
        .def("__repr__", [](const NetworkOptions& n) {
            return "NetworkOptions(connect_timeout_ms=" + std::to_string(n.connect_timeout_ms) +
                   ", total_timeout_ms=" + std::to_string(n.total_timeout_ms) + ", max_response_bytes=" +
                   std::to_string(n.max_response_bytes) + ", follow_redirects=" +
                   (n.follow_redirects ? "True" : "False") + ")";
        });

    m.def("clevis_encrypt", [](const std::string& pin, py::handle config, py::handle secret,
                               bool trust_on_first_use, const NetworkOptions* network) {
            std::string config_json = json_text(config, "config");
            SecretBuffer data = secret_from(secret, "secret");
            PinOptions options;
            options.trust_on_first_use = trust_on_first_use;
            if (network) options.network = *network;
            py::gil_scoped_release release;
            return clevis_encrypt(pin, config_json, data.bytes(), options);
        }, "pin"_a, "config"_a, "secret"_a, py::kw_only(), "trust_on_first_use"_a = false, "network"_a = py::none(),
        R"doc(Encrypt `secret` to a Clevis pin ("tang", "tpm2", "sss" or "null") as Clevis's compact JWE (GIL released).

`config` is Clevis's pin configuration as JSON text or a dict, e.g. {"url": ..., "thp": ...} or
{"pcr_ids": "7"}. An unpinned advertisement is refused (TangError listing its thumbprints) unless
trust_on_first_use=True. tpm2 uses the TPM Clevis would (TPM2TOOLS_TCTI, else /dev/tpmrm*): TpmError when
there is none.)doc");

    m.def("clevis_decrypt", [](py::handle jwe, bool trust_on_first_use, const NetworkOptions* network) {
            std::string compact = PyUnicode_Check(jwe.ptr()) ? jwe.cast<std::string>()
                                                             : std::string(secret_from(jwe, "jwe").view());
            PinOptions options;
            options.trust_on_first_use = trust_on_first_use;
            if (network) options.network = *network;
            py::gil_scoped_release release;
            return Secret(clevis_decrypt(compact, options));
        }, "jwe"_a, py::kw_only(), "trust_on_first_use"_a = false, "network"_a = py::none(),
        "Decrypt a compact JWE made by clevis_encrypt or stock `clevis encrypt` (GIL released). Returns a Secret.\n\n"
        "PcrMismatchError (an AuthError) when a tpm2 JWE's PCRs have changed; TpmError when there is no TPM.");
}

}  // namespace luksforge::python
