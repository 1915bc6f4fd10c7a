/*
 * py_cuda_stream.c - streams, synchronisation and CUDA graphs of the samba_ext._cuda module
 * (the model backend captures a decode step into a graph and replays it).
 */
#include "py_cuda.h"

#include <string.h>

static PyObject *
py_stream_sync(PyObject *self, PyObject *arg)
{
    void *stream;
    if (!samba_pycu_ptr(arg, &stream)) {
        return NULL;
    }
    samba_status s;
    Py_BEGIN_ALLOW_THREADS s = samba_cu_stream_sync(stream);
    Py_END_ALLOW_THREADS return samba_pycu_status_none(s);
}

static PyObject *
py_device_sync(PyObject *self, PyObject *noargs)
{
    samba_status s;
    Py_BEGIN_ALLOW_THREADS s = samba_cu_device_sync();
    Py_END_ALLOW_THREADS return samba_pycu_status_none(s);
}

static PyObject *
py_stream_wait(PyObject *self, PyObject *args)
{
    void *waiter, *producer;
    if (!PyArg_ParseTuple(args, "O&O&", samba_pycu_ptr, &waiter, samba_pycu_ptr, &producer)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_stream_wait(waiter, producer));
}

static PyObject *
py_stream_create(PyObject *self, PyObject *noargs)
{
    void *s = NULL;
    samba_status st = samba_cu_stream_create(&s);
    if (st != SAMBA_OK) {
        return samba_pycu_raise(st);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)s);
}

static PyObject *
py_stream_destroy(PyObject *self, PyObject *arg)
{
    void *s;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_stream_destroy(s));
}

static PyObject *
py_graph_begin(PyObject *self, PyObject *arg)
{
    void *s;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_graph_begin(s));
}

static PyObject *
py_graph_end(PyObject *self, PyObject *arg)
{
    void *s, *g = NULL;
    if (!samba_pycu_ptr(arg, &s)) {
        return NULL;
    }
    samba_status st = samba_cu_graph_end(s, &g);
    if (st != SAMBA_OK) {
        return samba_pycu_raise(st);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)g);
}

static PyObject *
py_graph_launch(PyObject *self, PyObject *args)
{
    void *g, *s;
    if (!PyArg_ParseTuple(args, "O&O&", samba_pycu_ptr, &g, samba_pycu_ptr, &s)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_graph_launch(g, s));
}

static PyObject *
py_graph_free(PyObject *self, PyObject *arg)
{
    void *g;
    if (!samba_pycu_ptr(arg, &g)) {
        return NULL;
    }
    return samba_pycu_status_none(samba_cu_graph_free(g));
}

PyMethodDef samba_pycu_stream_methods[] = {
    {"stream_sync", py_stream_sync, METH_O,
     "stream_sync($module, stream, /)\n--\n\nWait for the work queued on stream."},
    {"device_sync", py_device_sync, METH_NOARGS,
     "device_sync($module, /)\n--\n\nWait for all work on the current device."},
    {"stream_wait", py_stream_wait, METH_VARARGS,
     "stream_wait($module, waiter, producer, /)\n--\n\n"
     "Make stream waiter wait for the work queued on producer."},
    {"stream_create", py_stream_create, METH_NOARGS,
     "stream_create($module, /)\n--\n\nA new non-blocking stream (an int handle)."},
    {"stream_destroy", py_stream_destroy, METH_O,
     "stream_destroy($module, stream, /)\n--\n\nDestroy a stream made by stream_create."},
    {"graph_begin", py_graph_begin, METH_O,
     "graph_begin($module, stream, /)\n--\n\nStart capturing stream into a CUDA graph."},
    {"graph_end", py_graph_end, METH_O,
     "graph_end($module, stream, /)\n--\n\nEnd the capture; returns the graph exec handle."},
    {"graph_launch", py_graph_launch, METH_VARARGS,
     "graph_launch($module, graph, stream, /)\n--\n\nLaunch a captured graph on stream."},
    {"graph_free", py_graph_free, METH_O,
     "graph_free($module, graph, /)\n--\n\nFree a graph exec handle."},
    {NULL, NULL, 0, NULL}};
