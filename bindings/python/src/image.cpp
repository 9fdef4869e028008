// Disk images (image.hpp): probe GPT/MBR/bare LUKS images, find their LUKS2 volumes, attach loop devices.
#include "bindings.hpp"

#include <luksforge/image.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

namespace luksforge::python {
namespace {

using namespace pybind11::literals;

// A loop attachment Python can end early (detach(), `with`); the kernel detaches it on its own when the
// process dies (LO_FLAGS_AUTOCLEAR).
struct PyLoop {
    std::optional<LoopAttachment> loop;
    std::filesystem::path device;
};

struct PyAttachedTarget {
    std::optional<AttachedTarget> attached;
    std::filesystem::path device;
    LuksTarget target;
};

}  // namespace

void register_image(py::module_& m) {
    py::class_<Partition>(m, "Partition", "One partition of a disk image.")
        .def_readonly("number", &Partition::number)
        .def_readonly("offset_bytes", &Partition::offset_bytes)
        .def_readonly("size_bytes", &Partition::size_bytes)
        .def_readonly("type", &Partition::type)
        .def_readonly("uuid", &Partition::uuid)
        .def_readonly("name", &Partition::name)
        .def_readonly("luks_version", &Partition::luks_version)
        .def_readonly("luks_uuid", &Partition::luks_uuid)
        .def("__repr__", [](const Partition& p) {
            return "Partition(number=" + std::to_string(p.number) + ", offset_bytes=" + std::to_string(p.offset_bytes) +
                   ", luks_version=" + (p.luks_version ? std::to_string(*p.luks_version) : std::string("None")) + ")";
        });

    py::class_<ImageProbe>(m, "ImageProbe", "What libblkid sees in an image file or block device.")
        .def_readonly("path", &ImageProbe::path)
        .def_readonly("block_device", &ImageProbe::block_device)
        .def_readonly("size_bytes", &ImageProbe::size_bytes)
        .def_readonly("table", &ImageProbe::table, "'gpt', 'dos', or '' without a partition table.")
        .def_readonly("table_uuid", &ImageProbe::table_uuid)
        .def_readonly("luks_version", &ImageProbe::luks_version, "Set when the image itself is a LUKS volume.")
        .def_readonly("luks_uuid", &ImageProbe::luks_uuid)
        .def_readonly("partitions", &ImageProbe::partitions)
        .def("to_json", &ImageProbe::to_json)
        .def("to_dict", [](const ImageProbe& p) { return json_loads(p.to_json()); })
        .def("__repr__", [](const ImageProbe& p) {
            return "ImageProbe('" + p.path.string() + "', table='" + p.table + "', partitions=" +
                   std::to_string(p.partitions.size()) + ")";
        });

    py::class_<LuksTarget>(m, "LuksTarget", "One LUKS2 volume inside an image: the whole image or one partition.")
        .def_readonly("image", &LuksTarget::image)
        .def_readonly("partition", &LuksTarget::partition)
        .def_readonly("offset_bytes", &LuksTarget::offset_bytes)
        .def_readonly("size_bytes", &LuksTarget::size_bytes)
        .def("describe", &LuksTarget::describe)
        .def("__str__", &LuksTarget::describe)
        .def("__repr__", [](const LuksTarget& t) { return "LuksTarget('" + t.describe() + "')"; });

    m.def("probe_image", [](const std::filesystem::path& image) {
        py::gil_scoped_release release;
        return probe_image(image);
    }, "image"_a, "Probe a regular file or block device (GPT, MBR, bare LUKS).");
    m.def("detect_content", [](const std::filesystem::path& image) {
        py::gil_scoped_release release;
        return detect_content(image);
    }, "image"_a,
       "What libblkid recognises on the whole image (\"crypto_LUKS\", \"ext4\", \"gpt partition table\", ...), "
       "or None when it is blank: check before Volume.format, which overwrites like cryptsetup --batch-mode.");
    m.def("luks_targets", &luks_targets, "probe"_a, "Every LUKS2 volume in a probed image.");
    m.def("select_luks_target", [](const std::filesystem::path& image, std::optional<int> partition) {
        py::gil_scoped_release release;
        return select_luks_target(image, partition);
    }, "image"_a, py::kw_only(), "partition"_a = py::none(),
       "The one LUKS2 volume to operate on (FormatError when none, or several and no partition given).");

    py::class_<PyLoop>(m, "LoopDevice", "A file (or byte range) attached to a loop device; detached on exit.")
        .def_property_readonly("device", [](const PyLoop& l) { return l.device; })
        .def_property_readonly("attached", [](const PyLoop& l) { return l.loop.has_value(); })
        .def("detach", [](PyLoop& l) { l.loop.reset(); })
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](PyLoop& l, py::args) { l.loop.reset(); return false; })
        .def("__repr__", [](const PyLoop& l) {
            return "<luksforge.LoopDevice '" + l.device.string() + "'" + (l.loop ? ">" : " detached>");
        });
    m.def("attach_loop", [](const std::filesystem::path& file, std::uint64_t offset_bytes, std::uint64_t size_bytes,
                            bool read_only) {
        py::gil_scoped_release release;
        PyLoop l;
        l.loop.emplace(LoopAttachment::attach(file, offset_bytes, size_bytes, read_only));
        l.device = l.loop->device();
        return l;
    }, "file"_a, py::kw_only(), "offset_bytes"_a = 0, "size_bytes"_a = 0, "read_only"_a = false,
       "Attach a file or a byte range of it to a free loop device (use as a context manager).");

    py::class_<PyAttachedTarget>(m, "AttachedTarget",
                                 "A LuksTarget usable by path: the image itself, or a loop device over the partition.")
        .def_property_readonly("device", [](const PyAttachedTarget& a) { return a.device; })
        .def_property_readonly("target", [](const PyAttachedTarget& a) { return a.target; })
        .def("detach", [](PyAttachedTarget& a) { a.attached.reset(); })
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](PyAttachedTarget& a, py::args) { a.attached.reset(); return false; });
    m.def("attach_target", [](const LuksTarget& target, bool read_only) {
        py::gil_scoped_release release;
        PyAttachedTarget a;
        a.attached.emplace(AttachedTarget::attach(target, read_only));
        a.device = a.attached->device();
        a.target = target;
        return a;
    }, "target"_a, py::kw_only(), "read_only"_a = false,
       "Make a LuksTarget openable by path (use as a context manager; a loop device is detached on exit).");
}

}  // namespace luksforge::python
