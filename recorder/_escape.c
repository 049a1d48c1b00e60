/* recorder._escape: the inside of a JSON string from valid UTF-8, in C.
 *
 * A pty `cat` puts every byte of its output through recorder.cast's
 * escaping, and terminal text has a CR LF every few dozen bytes. In Python
 * the cheapest way was one bytes.replace per escaped byte kind (each a
 * memchr per occurrence and a full copy) plus strcspn scans through ctypes:
 * ~1 ns a byte, most of what recording adds to the relay's CPU per GB.
 * Here it is two passes over the data, 16 bytes at a time where SSE2 is
 * there: one to size the result, one to fill it; text that needs no escape
 * is returned as is.
 *
 * What it escapes is what json.dumps(ensure_ascii=False) escapes: backslash,
 * double quote, and the 32 control bytes (\b \t \n \f \r short, the others
 * as \u00XX). Bytes from 0x7F up pass through: the caller has checked that
 * the data is valid UTF-8. recorder.cast falls back to its Python path when
 * this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Bytes each input byte adds beyond itself when escaped (0: as is). */
static unsigned char extra[256];

/* The two bytes of each short escape (\n, \", ...), by the byte escaped. */
static char short_escape[256][2];

static void init_tables(void) {
    for (int c = 0; c < 0x20; c++)
        extra[c] = 5; /* \u00XX */
    extra['\b'] = extra['\t'] = extra['\n'] = extra['\f'] = extra['\r'] = 1;
    extra['"'] = extra['\\'] = 1;
    static const char *shorts = "\bb\tt\nn\ff\rr\"\"\\\\";
    for (const char *p = shorts; *p; p += 2) {
        short_escape[(unsigned char)p[0]][0] = '\\';
        short_escape[(unsigned char)p[0]][1] = p[1];
    }
}

#ifdef __SSE2__
/* Bits per byte of the 16 at p: ``*all`` those that need an escape, the
 * return value those among them written as \u00XX (5 bytes more, not 1). */
static inline unsigned block_masks(const unsigned char *p, unsigned *all) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    /* unsigned x <= k as max(x, k) == k */
    const __m128i k1f = _mm_set1_epi8(0x1F), k2 = _mm_set1_epi8(2), k1 = _mm_set1_epi8(1);
    const __m128i ctrl = _mm_cmpeq_epi8(_mm_max_epu8(v, k1f), k1f);
    const __m128i v8 = _mm_sub_epi8(v, _mm_set1_epi8(8)), v12 = _mm_sub_epi8(v, _mm_set1_epi8(12));
    const __m128i shortc = _mm_or_si128(_mm_cmpeq_epi8(_mm_max_epu8(v8, k2), k2),  /* \b \t \n */
                                        _mm_cmpeq_epi8(_mm_max_epu8(v12, k1), k1)); /* \f \r */
    const __m128i quote = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    const __m128i bslash = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    *all = (unsigned)_mm_movemask_epi8(_mm_or_si128(ctrl, _mm_or_si128(quote, bslash)));
    return (unsigned)_mm_movemask_epi8(_mm_andnot_si128(shortc, ctrl));
}
#endif

static Py_ssize_t extra_size(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t add = 0, i = 0;
#ifdef __SSE2__
    for (; i + 16 <= n; i += 16) {
        unsigned all, longs = block_masks(s + i, &all);
        add += __builtin_popcount(all) + 4 * __builtin_popcount(longs);
    }
#endif
    for (; i < n; i++)
        add += extra[s[i]];
    return add;
}

static const char hex[] = "0123456789abcdef";

static inline unsigned char *put_escape(unsigned char *o, unsigned char c) {
    if (extra[c] == 1) {
        memcpy(o, short_escape[c], 2);
        return o + 2;
    }
    memcpy(o, "\\u00", 4);
    o[4] = hex[c >> 4];
    o[5] = hex[c & 15];
    return o + 6;
}

static void fill(const unsigned char *s, Py_ssize_t n, unsigned char *o) {
    Py_ssize_t i = 0;
#ifdef __SSE2__
    /* While 32 bytes of input remain, a run before an escape is copied as a
     * whole 16-byte store (the escape and the next run overwrite the excess):
     * in bounds, as the output is never shorter than the input. */
    for (; i + 32 <= n; i += 16) {
        unsigned m;
        block_masks(s + i, &m);
        const unsigned char *b = s + i;
        int at = 0;
        while (m) {
            int k = __builtin_ctz(m);
            _mm_storeu_si128((__m128i *)o, _mm_loadu_si128((const __m128i *)(b + at)));
            o += k - at;
            o = put_escape(o, b[k]);
            at = k + 1;
            m &= m - 1;
        }
        _mm_storeu_si128((__m128i *)o, _mm_loadu_si128((const __m128i *)(b + at)));
        o += 16 - at;
    }
#endif
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (extra[c])
            o = put_escape(o, c);
        else
            *o++ = c;
    }
}

static PyObject *escape_json(PyObject *module, PyObject *arg) {
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "escape_json() takes bytes");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    Py_ssize_t add = extra_size(s, n);
    if (add == 0) {
        Py_INCREF(arg);
        return arg;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + add);
    if (out == NULL)
        return NULL;
    fill(s, n, (unsigned char *)PyBytes_AS_STRING(out));
    return out;
}

static PyMethodDef methods[] = {
    {"escape_json", escape_json, METH_O,
     "escape_json(data: bytes) -> bytes\n\nValid UTF-8 escaped for the inside of a JSON string, "
     "as json.dumps(ensure_ascii=False) escapes it; ``data`` itself when nothing needs it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "recorder._escape",
    .m_doc = "JSON string escaping of valid UTF-8 for recorder.cast.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__escape(void) {
    init_tables();
    return PyModule_Create(&module);
}
