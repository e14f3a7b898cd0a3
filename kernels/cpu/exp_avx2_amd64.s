//go:build amd64 && !purego

#include "textflag.h"

// The constants of expc<> (exp_amd64.s), each repeated over 8 lanes for
// AVX2, which has no broadcast memory operands.
DATA expc8<>+0(SB)/4, $0x42b17217 // hi
DATA expc8<>+4(SB)/4, $0x42b17217
DATA expc8<>+8(SB)/4, $0x42b17217
DATA expc8<>+12(SB)/4, $0x42b17217
DATA expc8<>+16(SB)/4, $0x42b17217
DATA expc8<>+20(SB)/4, $0x42b17217
DATA expc8<>+24(SB)/4, $0x42b17217
DATA expc8<>+28(SB)/4, $0x42b17217
DATA expc8<>+32(SB)/4, $0xc2aeac4f // lo
DATA expc8<>+36(SB)/4, $0xc2aeac4f
DATA expc8<>+40(SB)/4, $0xc2aeac4f
DATA expc8<>+44(SB)/4, $0xc2aeac4f
DATA expc8<>+48(SB)/4, $0xc2aeac4f
DATA expc8<>+52(SB)/4, $0xc2aeac4f
DATA expc8<>+56(SB)/4, $0xc2aeac4f
DATA expc8<>+60(SB)/4, $0xc2aeac4f
DATA expc8<>+64(SB)/4, $0x3fb8aa3b // log2e
DATA expc8<>+68(SB)/4, $0x3fb8aa3b
DATA expc8<>+72(SB)/4, $0x3fb8aa3b
DATA expc8<>+76(SB)/4, $0x3fb8aa3b
DATA expc8<>+80(SB)/4, $0x3fb8aa3b
DATA expc8<>+84(SB)/4, $0x3fb8aa3b
DATA expc8<>+88(SB)/4, $0x3fb8aa3b
DATA expc8<>+92(SB)/4, $0x3fb8aa3b
DATA expc8<>+96(SB)/4, $0x3f000000 // half
DATA expc8<>+100(SB)/4, $0x3f000000
DATA expc8<>+104(SB)/4, $0x3f000000
DATA expc8<>+108(SB)/4, $0x3f000000
DATA expc8<>+112(SB)/4, $0x3f000000
DATA expc8<>+116(SB)/4, $0x3f000000
DATA expc8<>+120(SB)/4, $0x3f000000
DATA expc8<>+124(SB)/4, $0x3f000000
DATA expc8<>+128(SB)/4, $0x3f318000 // c1
DATA expc8<>+132(SB)/4, $0x3f318000
DATA expc8<>+136(SB)/4, $0x3f318000
DATA expc8<>+140(SB)/4, $0x3f318000
DATA expc8<>+144(SB)/4, $0x3f318000
DATA expc8<>+148(SB)/4, $0x3f318000
DATA expc8<>+152(SB)/4, $0x3f318000
DATA expc8<>+156(SB)/4, $0x3f318000
DATA expc8<>+160(SB)/4, $0xb95e8083 // c2
DATA expc8<>+164(SB)/4, $0xb95e8083
DATA expc8<>+168(SB)/4, $0xb95e8083
DATA expc8<>+172(SB)/4, $0xb95e8083
DATA expc8<>+176(SB)/4, $0xb95e8083
DATA expc8<>+180(SB)/4, $0xb95e8083
DATA expc8<>+184(SB)/4, $0xb95e8083
DATA expc8<>+188(SB)/4, $0xb95e8083
DATA expc8<>+192(SB)/4, $0x39506967 // p0
DATA expc8<>+196(SB)/4, $0x39506967
DATA expc8<>+200(SB)/4, $0x39506967
DATA expc8<>+204(SB)/4, $0x39506967
DATA expc8<>+208(SB)/4, $0x39506967
DATA expc8<>+212(SB)/4, $0x39506967
DATA expc8<>+216(SB)/4, $0x39506967
DATA expc8<>+220(SB)/4, $0x39506967
DATA expc8<>+224(SB)/4, $0x3ab743ce // p1
DATA expc8<>+228(SB)/4, $0x3ab743ce
DATA expc8<>+232(SB)/4, $0x3ab743ce
DATA expc8<>+236(SB)/4, $0x3ab743ce
DATA expc8<>+240(SB)/4, $0x3ab743ce
DATA expc8<>+244(SB)/4, $0x3ab743ce
DATA expc8<>+248(SB)/4, $0x3ab743ce
DATA expc8<>+252(SB)/4, $0x3ab743ce
DATA expc8<>+256(SB)/4, $0x3c088908 // p2
DATA expc8<>+260(SB)/4, $0x3c088908
DATA expc8<>+264(SB)/4, $0x3c088908
DATA expc8<>+268(SB)/4, $0x3c088908
DATA expc8<>+272(SB)/4, $0x3c088908
DATA expc8<>+276(SB)/4, $0x3c088908
DATA expc8<>+280(SB)/4, $0x3c088908
DATA expc8<>+284(SB)/4, $0x3c088908
DATA expc8<>+288(SB)/4, $0x3d2aa9c1 // p3
DATA expc8<>+292(SB)/4, $0x3d2aa9c1
DATA expc8<>+296(SB)/4, $0x3d2aa9c1
DATA expc8<>+300(SB)/4, $0x3d2aa9c1
DATA expc8<>+304(SB)/4, $0x3d2aa9c1
DATA expc8<>+308(SB)/4, $0x3d2aa9c1
DATA expc8<>+312(SB)/4, $0x3d2aa9c1
DATA expc8<>+316(SB)/4, $0x3d2aa9c1
DATA expc8<>+320(SB)/4, $0x3e2aaaaa // p4
DATA expc8<>+324(SB)/4, $0x3e2aaaaa
DATA expc8<>+328(SB)/4, $0x3e2aaaaa
DATA expc8<>+332(SB)/4, $0x3e2aaaaa
DATA expc8<>+336(SB)/4, $0x3e2aaaaa
DATA expc8<>+340(SB)/4, $0x3e2aaaaa
DATA expc8<>+344(SB)/4, $0x3e2aaaaa
DATA expc8<>+348(SB)/4, $0x3e2aaaaa
DATA expc8<>+352(SB)/4, $0x3f000000 // p5
DATA expc8<>+356(SB)/4, $0x3f000000
DATA expc8<>+360(SB)/4, $0x3f000000
DATA expc8<>+364(SB)/4, $0x3f000000
DATA expc8<>+368(SB)/4, $0x3f000000
DATA expc8<>+372(SB)/4, $0x3f000000
DATA expc8<>+376(SB)/4, $0x3f000000
DATA expc8<>+380(SB)/4, $0x3f000000
DATA expc8<>+384(SB)/4, $0x3f800000 // one
DATA expc8<>+388(SB)/4, $0x3f800000
DATA expc8<>+392(SB)/4, $0x3f800000
DATA expc8<>+396(SB)/4, $0x3f800000
DATA expc8<>+400(SB)/4, $0x3f800000
DATA expc8<>+404(SB)/4, $0x3f800000
DATA expc8<>+408(SB)/4, $0x3f800000
DATA expc8<>+412(SB)/4, $0x3f800000
DATA expc8<>+416(SB)/4, $0x7f // bias
DATA expc8<>+420(SB)/4, $0x7f
DATA expc8<>+424(SB)/4, $0x7f
DATA expc8<>+428(SB)/4, $0x7f
DATA expc8<>+432(SB)/4, $0x7f
DATA expc8<>+436(SB)/4, $0x7f
DATA expc8<>+440(SB)/4, $0x7f
DATA expc8<>+444(SB)/4, $0x7f
GLOBL expc8<>(SB), RODATA|NOPTR, $448

// func expShiftAVX2(dst, src *float32, n int, shift float32, sum *[16]float32)
//
// expShiftAVX512 with AVX2: the same operations on two halves of 8, so
// that each of the 16 lane sums adds the same values in the same order.
TEXT ·expShiftAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS shift+24(FP), Y13
	MOVQ sum+32(FP), DX
	VMOVUPS (DX), Y14
	VMOVUPS 32(DX), Y15
	SHRQ $4, CX
	JZ done
loop:
	VMOVUPS 0(SI), Y0
	VSUBPS Y13, Y0, Y0
	VCMPPS $1, expc8<>+32(SB), Y0, Y6
	VMINPS expc8<>+0(SB), Y0, Y0
	VMAXPS expc8<>+32(SB), Y0, Y0
	VMULPS expc8<>+64(SB), Y0, Y1
	VADDPS expc8<>+96(SB), Y1, Y1
	VROUNDPS $9, Y1, Y1
	VMOVUPS expc8<>+128(SB), Y7
	VFNMADD231PS Y7, Y1, Y0
	VMOVUPS expc8<>+160(SB), Y7
	VFNMADD231PS Y7, Y1, Y0
	VMULPS Y0, Y0, Y3
	VMOVUPS expc8<>+192(SB), Y4
	VFMADD213PS expc8<>+224(SB), Y0, Y4
	VFMADD213PS expc8<>+256(SB), Y0, Y4
	VFMADD213PS expc8<>+288(SB), Y0, Y4
	VFMADD213PS expc8<>+320(SB), Y0, Y4
	VFMADD213PS expc8<>+352(SB), Y0, Y4
	VFMADD213PS Y0, Y3, Y4
	VADDPS expc8<>+384(SB), Y4, Y4
	VCVTTPS2DQ Y1, Y5
	VPADDD expc8<>+416(SB), Y5, Y5
	VPSLLD $23, Y5, Y5
	VMULPS Y5, Y4, Y4
	VANDNPS Y4, Y6, Y4
	VMOVUPS Y4, 0(DI)
	VADDPS Y4, Y14, Y14
	VMOVUPS 32(SI), Y0
	VSUBPS Y13, Y0, Y0
	VCMPPS $1, expc8<>+32(SB), Y0, Y6
	VMINPS expc8<>+0(SB), Y0, Y0
	VMAXPS expc8<>+32(SB), Y0, Y0
	VMULPS expc8<>+64(SB), Y0, Y1
	VADDPS expc8<>+96(SB), Y1, Y1
	VROUNDPS $9, Y1, Y1
	VMOVUPS expc8<>+128(SB), Y7
	VFNMADD231PS Y7, Y1, Y0
	VMOVUPS expc8<>+160(SB), Y7
	VFNMADD231PS Y7, Y1, Y0
	VMULPS Y0, Y0, Y3
	VMOVUPS expc8<>+192(SB), Y4
	VFMADD213PS expc8<>+224(SB), Y0, Y4
	VFMADD213PS expc8<>+256(SB), Y0, Y4
	VFMADD213PS expc8<>+288(SB), Y0, Y4
	VFMADD213PS expc8<>+320(SB), Y0, Y4
	VFMADD213PS expc8<>+352(SB), Y0, Y4
	VFMADD213PS Y0, Y3, Y4
	VADDPS expc8<>+384(SB), Y4, Y4
	VCVTTPS2DQ Y1, Y5
	VPADDD expc8<>+416(SB), Y5, Y5
	VPSLLD $23, Y5, Y5
	VMULPS Y5, Y4, Y4
	VANDNPS Y4, Y6, Y4
	VMOVUPS Y4, 32(DI)
	VADDPS Y4, Y15, Y15
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ loop
done:
	VMOVUPS Y14, (DX)
	VMOVUPS Y15, 32(DX)
	VZEROUPPER
	RET

// func scaleMaxAVX2(x *float32, n int, scale float32, mx *[16]float32)
TEXT ·scaleMaxAVX2(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS scale+16(FP), Y1
	MOVQ mx+24(FP), DX
	VMOVUPS (DX), Y2
	VMOVUPS 32(DX), Y3
	SHRQ $4, CX
	JZ smdone
smloop:
	VMULPS (SI), Y1, Y0
	VMOVUPS Y0, (SI)
	VMAXPS Y0, Y2, Y2
	VMULPS 32(SI), Y1, Y0
	VMOVUPS Y0, 32(SI)
	VMAXPS Y0, Y3, Y3
	ADDQ $64, SI
	DECQ CX
	JNZ smloop
smdone:
	VMOVUPS Y2, (DX)
	VMOVUPS Y3, 32(DX)
	VZEROUPPER
	RET
