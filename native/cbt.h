/*
 * Change-block tracking in the native data path: the map file beside the image (layout in
 * tcmu_pr/cbt/layout.py, docs/cbt.md), mapped shared by every server on the host.
 *
 * Nothing in the file is trusted: tcmu_cbt_attach checks the header against the mapping's
 * length once and keeps its own copy of the geometry, so a header rewritten later (another
 * process, a corrupt disk) can change what number is written but never where.
 */
#ifndef TCMU_PR_CBT_H
#define TCMU_PR_CBT_H

#include <stdint.h>

#define CBT_HEADER_SIZE 4096u
#define CBT_VERSION 1u
#define CBT_MIN_SHIFT 12u
#define CBT_MAX_SHIFT 20u

/* Header offsets (little endian; all servers on a host share one byte order). */
#define CBT_OFF_MAGIC 0u      /* 8 bytes "TCMUCBT1" */
#define CBT_OFF_VERSION 8u    /* u32 */
#define CBT_OFF_BLOCK_SIZE 12u /* u32 */
#define CBT_OFF_CAPACITY 16u  /* u64 */
#define CBT_OFF_COUNT 24u     /* u64 */
#define CBT_OFF_NUMBER 48u    /* u32: current change number, 1..255 */
#define CBT_OFF_INFLIGHT 72u  /* u32: writes between enter and leave */
#define CBT_OFF_FREEZE 76u    /* u32: a snapshot is being taken: punt writes */
#define CBT_OFF_COW 88u       /* u32: a live snapshot wants first writes copied */

/* What the data path keeps of an attached map (geometry validated once). */
struct cbt_map {
	uint8_t *base;
	uint64_t len;
	uint64_t block_count;
	uint32_t block_shift;
	uint8_t *map; /* block_count bytes: change number of each block's last write */
	uint8_t *cow; /* block_count bytes: 1 once a block is safe from the live snapshots */
	uint64_t marked; /* writes marked through this attachment */
	uint64_t punted; /* writes handed to Python (freeze, copy-on-write) */
};

/* Bytes the file needs for block_count blocks (header + map + cow, page-rounded). */
uint64_t tcmu_cbt_file_size(uint64_t block_count);

/* Validate the header at base against len and fill m: 0 or -EINVAL. */
int tcmu_cbt_attach(struct cbt_map *m, void *base, uint64_t len);

/* Count a write in flight; 1 (nothing counted) when a snapshot is freezing the map and
 * force is 0. Every 0 must be paired with tcmu_cbt_leave. */
int tcmu_cbt_enter(struct cbt_map *m, int force);
void tcmu_cbt_leave(struct cbt_map *m);

/* Mark the blocks of [off, off+len) with the current change number (clipped to the map).
 * Returns 1 when one of them still needs its copy-on-write for a live snapshot. */
int tcmu_cbt_mark(struct cbt_map *m, uint64_t off, uint64_t len);

/* The data path's one call before a write: enter, mark, and 0 (go on, then leave after the
 * write) or 1 (entered nothing: punt the write to Python, which waits or copies first). */
int tcmu_cbt_write_begin(struct cbt_map *m, uint64_t off, uint64_t len);

/* Snapshot side: set or clear the freeze flag; read the in-flight count. */
void tcmu_cbt_set_freeze(struct cbt_map *m, uint32_t on);
uint32_t tcmu_cbt_inflight(struct cbt_map *m);
void tcmu_cbt_reset_inflight(struct cbt_map *m);

#endif
