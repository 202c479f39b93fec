/* slaprobe_speedups._wire: the collector's result decoding, compiled.
 *
 * Placeholder module; the decoder lands here with its equivalence tests. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *abi(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(1);
}

static PyMethodDef methods[] = {
    {"abi", abi, METH_NOARGS, "The interface version of this module."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
