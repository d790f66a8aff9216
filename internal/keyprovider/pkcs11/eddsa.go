//go:build cgo && pkcs11

package pkcs11

/*
#include <stdlib.h>

// CK_EDDSA_PARAMS (PKCS#11 3.0, 2.3.14) as the Unix headers lay it out:
// natural alignment, CK_BBOOL a byte, CK_ULONG an unsigned long.
typedef struct {
	unsigned char  phFlag;
	unsigned long  ulContextDataLen;
	unsigned char *pContextData;
} ck_eddsa_params;
*/
import "C"

import "unsafe"

// eddsaParams is the CKM_EDDSA mechanism parameter for Ed25519ph (ph) or
// Ed25519ctx with context, as bytes miekg/pkcs11 copies into the call.
// The context itself must live in C memory (the struct points at it, and
// cgo forbids a Go pointer inside memory handed to C): free releases it,
// after the signing operation is finished.
func eddsaParams(ph bool, context []byte) (param []byte, free func()) {
	var p C.ck_eddsa_params
	if ph {
		p.phFlag = 1
	}
	var cctx unsafe.Pointer
	if len(context) > 0 {
		cctx = C.CBytes(context)
		p.pContextData = (*C.uchar)(cctx)
		p.ulContextDataLen = C.ulong(len(context))
	}
	param = C.GoBytes(unsafe.Pointer(&p), C.int(C.sizeof_ck_eddsa_params))
	return param, func() {
		if cctx != nil {
			C.free(cctx)
		}
	}
}
