	addq	%rsi, %rdx
	cmpl	%edi, %eax
	jne	.L4029
	vmovups	(%r10), %zmm1
	vmovups	(%r10,%rsi), %zmm0
	addq	$64, %r11
	addq	$64, %r10
	vbroadcastss	(%r8,%rcx,4), %zmm2
	movq	-56(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm30
	vfmadd231ps	%zmm0, %zmm2, %zmm29
	vbroadcastss	(%r12,%rcx,4), %zmm2
	vfmadd231ps	%zmm1, %zmm2, %zmm28
	vfmadd231ps	%zmm0, %zmm2, %zmm27
	vbroadcastss	(%r14,%rcx,4), %zmm2
	vfmadd231ps	%zmm1, %zmm2, %zmm26
	vfmadd231ps	%zmm0, %zmm2, %zmm25
	vbroadcastss	(%r15,%rcx,4), %zmm2
	vfmadd231ps	%zmm1, %zmm2, %zmm24
	vfmadd231ps	%zmm0, %zmm2, %zmm23
	vbroadcastss	(%rbx,%rcx,4), %zmm2
	vfmadd231ps	%zmm1, %zmm2, %zmm22
	vfmadd231ps	%zmm0, %zmm2, %zmm21
	vbroadcastss	(%r9,%rcx,4), %zmm2
	vfmadd231ps	%zmm1, %zmm2, %zmm20
	vfmadd231ps	%zmm0, %zmm2, %zmm19
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-48(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm18
	vfmadd231ps	%zmm0, %zmm2, %zmm17
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-40(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm16
	vfmadd231ps	%zmm0, %zmm2, %zmm15
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-32(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm14
	vfmadd231ps	%zmm0, %zmm2, %zmm13
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-24(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm12
	vfmadd231ps	%zmm0, %zmm2, %zmm11
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-16(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm10
	vfmadd231ps	%zmm0, %zmm2, %zmm9
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	-8(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm8
	vfmadd231ps	%zmm0, %zmm2, %zmm7
	vbroadcastss	(%rax,%rcx,4), %zmm2
	movq	(%rsp), %rax
	vfmadd231ps	%zmm1, %zmm2, %zmm6
	vfmadd231ps	%zmm0, %zmm2, %zmm5
	vbroadcastss	(%rax,%rcx,4), %zmm2
	addq	$1, %rcx
	vfmadd231ps	%zmm1, %zmm2, %zmm4
	vfmadd231ps	%zmm0, %zmm2, %zmm3
	cmpq	%r13, %rcx
	jne	.L4028
