// Deployment policy (policy.hpp): load, check with line numbers, and what it means for binding.
#include "bindings.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/policy.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

namespace luksforge::python {

using namespace pybind11::literals;

void register_policy(py::module_& m) {
    py::class_<PolicyProblem>(m, "PolicyProblem", "One problem in a policy: where it is and what is wrong.")
        .def_readonly("source", &PolicyProblem::source)
        .def_readonly("line", &PolicyProblem::line, "1-based line in the policy; 0 when it belongs to no line.")
        .def_readonly("message", &PolicyProblem::message)
        .def("__str__", &PolicyProblem::to_string)
        .def("__repr__", [](const PolicyProblem& p) { return "PolicyProblem('" + p.to_string() + "')"; });

    py::class_<PolicyTangServer>(m, "PolicyTangServer", "One [[tang]] server of a policy.")
        .def_readonly("url", &PolicyTangServer::url)
        .def_readonly("thp", &PolicyTangServer::thp)
        .def_readonly("adv", &PolicyTangServer::adv)
        .def_readonly("line", &PolicyTangServer::line)
        .def("__repr__", [](const PolicyTangServer& s) { return "PolicyTangServer('" + s.url + "')"; });

    py::class_<TokenEstimate>(m, "TokenEstimate", "Size of the LUKS2 metadata a binding under a policy needs.")
        .def_readonly("token_bytes", &TokenEstimate::token_bytes)
        .def_readonly("required_json_bytes", &TokenEstimate::required_json_bytes)
        .def_readonly("measured", &TokenEstimate::measured);

    py::class_<Policy>(m, "Policy", R"doc(
A deployment policy (TOML, see docs/policy.md): Tang servers with pinned thumbprints or offline
advertisements, threshold, cipher and PBKDF requirements, LUKS2 metadata size, instances allowed per key.)doc")
        .def_static("load", [](const std::filesystem::path& path) {
            py::gil_scoped_release release;
            return Policy::load(path);
        }, "path"_a, "Parse a policy file (FormatError on TOML syntax errors, NotFoundError when missing).")
        .def_static("parse", [](std::string_view text, std::string source, std::optional<std::filesystem::path> base_dir) {
            return Policy::parse(text, std::move(source), base_dir.value_or(std::filesystem::current_path()));
        }, "text"_a, py::kw_only(), "source"_a = "<policy>", "base_dir"_a = py::none(),
           "Parse policy text; relative `adv` paths resolve against base_dir (default: the current directory).")
        .def("check", [](const Policy& p) {
            py::gil_scoped_release release;
            return p.check();
        }, "Every problem, in line order (reads `adv` files, never the network). Empty when valid.")
        .def("require_valid", [](const Policy& p) {
            py::gil_scoped_release release;
            p.require_valid();
        }, "Raise FormatError listing every problem unless the policy is valid.")
        .def_readonly("source", &Policy::source)
        .def_readonly("servers", &Policy::servers)
        .def_readonly("threshold", &Policy::threshold)
        .def_readonly("trust_on_first_use", &Policy::trust_on_first_use)
        .def_readonly("max_instances_per_key", &Policy::max_instances_per_key)
        .def_readonly("ledger", &Policy::ledger, "The policy's `ledger` (a file path or a postgresql:// URL); '' when unset.")
        .def_readonly("cipher", &Policy::cipher)
        .def_readonly("key_bits", &Policy::key_bits)
        .def_readonly("metadata_bytes", &Policy::metadata_bytes)
        .def_readonly("keyslots_bytes", &Policy::keyslots_bytes)
        .def_readonly("keyslot_pbkdf", &Policy::keyslot_pbkdf)
        .def_property_readonly("tpm2", [](const Policy& p) -> std::optional<std::string> {
            if (!p.tpm2) return std::nullopt;
            return p.tpm2->config_json;
        }, "The [tpm2] pin's Clevis config (JSON text), or None.")
        .def_property_readonly("pin", [](const Policy& p) { return p.pin().name; },
                               "'tang' (one server), 'tpm2' (a [tpm2] alone) or 'sss'.")
        .def_property_readonly("pin_config", [](const Policy& p) { return p.pin().config_json; },
                               "Clevis's pin configuration (JSON text) the policy binds.")
        .def("estimate_token", [](const Policy& p) {
            py::gil_scoped_release release;
            return p.estimate_token();
        })
        .def("verify_volume", [](const Policy& p, PyVolume& v) {
            return v.run([&](Volume& vol) { return p.verify_volume(vol); });
        }, "volume"_a, "Problems of an existing volume under this policy (cipher, key size, metadata, PBKDF).")
        .def("binding_fits", [](const Policy& p, PyVolume& v) {
            return v.run([&](Volume& vol) { return p.binding_fits(vol); });
        }, "volume"_a, "None when a new binding fits the volume's metadata, else the problem.")
        .def("bind", [](const Policy& p, PyVolume& v, py::handle passphrase, bool verify,
                        const NetworkOptions* network) {
            std::optional<SecretBuffer> pass = optional_secret_from(passphrase, "passphrase");
            clevis::BindOptions options;
            options.pin = p.pin_options((network ? *network : NetworkOptions{}));
            options.pbkdf = p.keyslot_pbkdf;
            options.verify = verify;
            Policy::Pin pin = p.pin();
            return v.run([&](Volume& vol) {
                p.require_valid();
                if (auto problem = p.binding_fits(vol)) throw FormatError(problem->to_string());
                if (pass) return clevis::bind(vol, pin.name, pin.config_json, pass->view(), options);
                return clevis::bind_with_volume_key(vol, pin.name, pin.config_json, options);
            });
        }, "volume"_a, py::kw_only(), "passphrase"_a = py::none(), "verify"_a = true, "network"_a = py::none(),
           "Bind the policy's pin to `volume` (like `luksforge bind --policy`), refusing before any write when the "
           "policy is invalid or the binding would not fit.")
        .def("__repr__", [](const Policy& p) {
            return "Policy('" + p.source + "', servers=" + std::to_string(p.servers.size()) +
                   ", threshold=" + std::to_string(p.threshold) + ")";
        });
}

}  // namespace luksforge::python
