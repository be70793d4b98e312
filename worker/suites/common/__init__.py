"""Machinery shared by the suites, written once (torch / numpy only; importing this package imports nothing).

  device    resolve_device, default_device
  arrays    matrix_shape, native, to_tensor, check_finite (NON_FINITE), l2_normalize (NORMALIZE_EPS), to_list
  budget    MEMORY_BUDGET (512 MiB), rows_per_chunk
  sampling  subsample_rows, stratified_split
  topk      plan_chunks, iter_topk, topk_lowest_index, topk_similarity, knn_votes, knn_votes_at, knn_predict
            (KNN_TEMPERATURE = 0.07)
  duplicates distinct_rows (DistinctRows.expand): identical bank rows searched once, so copies tie exactly
  roc       auroc, fpr_at_tpr, tpr_at_fpr, roc_points, roc_counts
  images    to_float, to_float_images, center_square, to_square_float, luma (LUMA)
  encode    encode_batched
  rows      read_rows, take_rows, prefetched (pread off memmaps)

Suite call site -> common function (parameters that keep today's numbers exactly):

  base.resolve_device, backdoor._device      -> device.resolve_device(device, data)
  backdoor.scan_encoder / equivariance inline -> device.resolve_device(device)   (no data: a tensor of
      "cuda if available else cpu"                  images must not pick the device, as today)
  spectrum._shape                             -> arrays.matrix_shape(x, real=True)   (dtype check kept)
  probes._shape                               -> arrays.matrix_shape(x)               (no dtype check)
  spectrum._native, probes._native            -> arrays.native
  spectrum._to_list                           -> arrays.to_list(a)                    (NaN / inf kept as floats)
  probes._to_list                             -> arrays.to_list(a, nonfinite_as_none=True)   (NaN / inf -> None)
  spectrum NON_FINITE, _check_finite; probes / backdoor inline finite checks -> arrays.NON_FINITE, check_finite
  spectrum._rows_to_tensor                    -> arrays.to_tensor(x, dev, float64, copy=True) + check_finite
  probes._as_tensor                           -> arrays.to_tensor(x, dev, dtype) + its own 2-D check + check_finite
  backdoor._as_rows                           -> arrays.to_tensor(x, dev, float32) + matrix_shape + check_finite
  NORMALIZE_EPS (spectrum, probes, backdoor)  -> arrays.NORMALIZE_EPS
  probes.l2_normalize; backdoor F.normalize(x, dim=1, eps=NORMALIZE_EPS); spectrum x / x.norm(dim=1,
      keepdim=True).clamp_min(NORMALIZE_EPS)  -> arrays.l2_normalize (bit-identical to all three)
  probes MEMORY_BUDGET (512 MiB)              -> budget.MEMORY_BUDGET
  backdoor MEMORY_BUDGET (256 MiB)            -> pass budget=MEMORY_BUDGET // 2 to keep its chunk boundaries
  "max(1, budget // bytes_per_row)" (probes predict / _chunked_logits, backdoor _assign; spectrum's
      uniformity block = min(m, rows_per_chunk(PAIRWISE_BLOCK_ELEMENTS, m))) -> budget.rows_per_chunk
  spectrum.subsample_rows(n, max_rows, seed)  -> sampling.subsample_rows(n, max_rows, seed)
  backdoor.scan_encoder image subsample       -> sampling.subsample_rows(n_total, max_images, seed)
  equivariance.run_equivariance subsample     -> sampling.subsample_rows(n_total, n_images, seed,
                                                   size=max(n_images, MIN_IMAGES))
  probes.stratified_split(labels, f, seed)    -> sampling.stratified_split(_as_labels(labels), f, seed)
                                                   (defaults rounding="half_up", both_sides=True)
  datasets.builtin.stratified_split           -> sampling.stratified_split(..., rounding="half_even",
                                                   both_sides=False) (done; builtin keeps its int8 wrapper)
  probes.weighted_knn chunk loop              -> plan = topk.plan_chunks(n_t, kmax, budget=memory_budget_bytes,
      itemsize=4, per_query_bytes=12*3*kmax + 4*n_c*2 + 4*d, query_rows=query_chunk, bank_rows=train_chunk);
      for a, b, v, i in topk.iter_topk(qx_all, tx, kmax, plan, matmul=matmul, prepare=l2_normalize):
      max_sim = v[:, 0]; per k: topk.knn_votes(v[:, :k_e], ty_idx[i][:, :k_e], n_c, temperature) (float32);
      KnnResult.query_chunk / train_chunk = plan.query_rows / plan.bank_rows. Pass probes' numpy-BLAS matmul.
  probes.max_cosine_similarity                -> unchanged (weighted_knn with ks=(1,)), or iter_topk with k=1
  backdoor.knn_predict(bank, y, q, k, T)      -> topk.knn_predict(bank, y, q, k, temperature=T,
                                                   budget=MEMORY_BUDGET // 2)
  backdoor.knn_density chunk loop             -> z = l2_normalize(rows); k = min(k, n - 1); for a, b, v, _ in
      iter_topk(z, z, k, plan_chunks(n, k, budget=MEMORY_BUDGET // 2, itemsize=4, split_bank=False),
      exclude_self=True): out[a:b] = v.to(float64).mean(dim=1)
  KNN_TEMPERATURE (probes, backdoor)          -> topk.KNN_TEMPERATURE
  equivariance.retrieval_scores               -> stays (expected rank with ties on a small M×G matrix, no top-k)
  probes.auroc, fpr_at_tpr (tpr = 0.95)       -> roc.auroc, roc.fpr_at_tpr (default tpr = roc.DEFAULT_TPR = 0.95)
  backdoor.tpr_at_fpr, roc_points (200)       -> roc.tpr_at_fpr, roc.roc_points (ROC_POINTS = 200); all four now
      raise ValueError("scores must be finite") and "{n} scores but {m} labels" (scan_pool already called
      auroc on the same scores first, so no suite result changes)
  backdoor.to_float_images(images, dev)       -> images.to_float_images(images, dev)   (channels kept)
  backdoor DECREE x_u8[...].permute(0, 3, 1, 2).float().div_(255.0) -> images.to_float(x_u8[...])
  equivariance.to_square_float, LUMA, luma    -> images.to_square_float, LUMA, luma
  datasets.transforms.to_float, LUMA          -> images.to_float(batch, channels), LUMA (done; transforms delegates)
  backdoor.encode_images(encode, imgs, dev)   -> encode.encode_batched(encode, imgs, dev, ENCODE_BATCH)  (float64)
  backdoor.decree final stamped pass          -> encode_batched(encode, x_u8, dev, ENCODE_BATCH,
                                                   prepare=lambda x, a, b: (1 - m) * to_float(x) + m * p)
  equivariance._Encoder.features              -> encode_batched(encode, imgs, dev, batch_size, dtype=torch.float32,
      check=True, prepare=lambda x, a, b: view(family, to_square_float(x), None if p is None else p[a:b],
      pixel_scale).contiguous()), then its own finite check ("the encoder returned NaN ... ({family})")
  worker.suites.rows (read_rows, take_rows, prefetched) -> rows (same functions)
"""
