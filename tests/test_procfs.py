"""fp_onnx.procfs: one field of a /proc-style file, None where it cannot be read."""
from fp_onnx.procfs import proc_field


def test_proc_field_reads_the_first_word_after_the_key(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nUmask:\t0027\nMemAvailable:   123 kB\n")
    assert proc_field(str(status), "Umask:") == "0027"
    assert proc_field(str(status), "MemAvailable:") == "123"


def test_proc_field_is_none_for_a_missing_key_file_or_value(tmp_path):
    status = tmp_path / "status"
    status.write_text("Umask:\n")
    assert proc_field(str(status), "Umask:") is None
    assert proc_field(str(status), "Threads:") is None
    assert proc_field(str(tmp_path / "absent"), "Umask:") is None
