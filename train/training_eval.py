"""Evaluation inside a training run: the validation LM loss (every --eval_steps and at each epoch end), the
validation generation metrics that pick best_model/ at each epoch end, and the test-set results of the last-epoch
model and of best_model/ (final_results_*.json). Evaluation never consumes training randomness.
"""

from __future__ import annotations

import shutil

from mot_engine import load_checkpoint
from mot_engine import save_checkpoint as save_mot_checkpoint

from .checkpointing import BEST_DIR, preserved_rng, replace_dir
from .evaluate import evaluate_generation, evaluate_lm_loss, format_results, generation_mode
from .outputs import say, write_json, write_predictions


class TrainingEvaluation:
    """Mixed into train.trainer.Trainer (a seam of that class, kept apart to keep the loop readable). Reads the
    trainer's args, acc, mot, splits, state, out, main, world, total_steps, last_log and log."""

    def _eval_loss(self) -> None:
        if not self.splits.validation:
            return
        with preserved_rng():
            res = evaluate_lm_loss(self.mot, self.splits.validation, batch_size=self.args.eval_batch_size,
                                   accelerator=self.acc)
        row = {"type": "eval_loss", "step": self.state.global_step, "epoch": self._epoch_progress(),
               "val_lm_loss": res["lm_loss"], "val_target_tokens": res["target_tokens"],
               "val_nonfinite_batches": res["nonfinite_batches"]}
        self.log.write(row)
        if res["lm_loss"] is not None:
            say(f"step {row['step']}: validation LM loss {res['lm_loss']:.4f}", self.acc)

    def _epoch_end_generation(self) -> None:
        args, st = self.args, self.state
        val = self.splits.validation[: args.eval_max_samples or None]
        if not val:
            self._save_best(None, [], None)
            return
        mode = generation_mode(args)
        with preserved_rng():
            summary, records = evaluate_generation(
                self.mot, val, mode=mode, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                compile_check=False, per_sample_metrics=False, accelerator=self.acc,
            )
        metrics = summary["metrics"]
        value = metrics[args.best_model_metric]
        improved = st.best_value is None or value > st.best_value  # all selectable metrics: higher is better
        row = {"type": "eval_generation", "step": st.global_step, "epoch": st.epoch + 1, "split": "validation",
               "num_samples": summary["num_samples"], "generation_mode": mode,
               **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
               "mean_router_entropy": summary["routing"]["mean_router_entropy"],
               "primary_share": summary["routing"]["primary_share"], "is_best": improved}
        self.log.write(row)
        say(f"epoch {st.epoch + 1}: validation {args.best_model_metric} {value:.4f} on {len(val)} pairs"
            + (" (best so far)" if improved else f" (best {st.best_value:.4f} at step {st.best_step})"), self.acc)
        if improved:
            self._save_best(value, records, {**metrics, "num_samples": summary["num_samples"], "generation_mode": mode})

    def _save_best(self, value, records, metrics) -> None:
        st = self.state
        st.best_value, st.best_step, st.best_epoch = value, st.global_step, st.epoch + 1
        if not self.main:
            return
        tmp = self.out / f".{BEST_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        metric = {"name": self.args.best_model_metric, "value": value, "split": "validation", "all": metrics}
        save_mot_checkpoint(self.mot, tmp, preset=self.mot.preset, step=st.global_step, epoch=st.epoch + 1,
                            metric=metric, extra={"kind": "best_model", "selected_by": self.args.best_model_metric})
        if records:
            write_predictions(tmp / "validation_predictions.jsonl", records)
        replace_dir(tmp, self.out / BEST_DIR)

    # ------------------------------------------------------------------ the end

    def final_evaluation(self) -> dict:
        """Test-set results of the last-epoch model and of best_model/ (final_results_*.json)."""
        args, st = self.args, self.state
        last = self._test_results("last_epoch", None)
        best_dir = self.out / BEST_DIR
        if st.best_step == st.global_step or not best_dir.is_dir():
            best = {**last, "model": "best_model", "checkpoint": str(best_dir),
                    "same_model_as": "final_results_last_epoch.json"}  # best_model/ is the last epoch's model
            if args.save_predictions and self.main:
                shutil.copyfile(self.out / "predictions_last_epoch.jsonl", self.out / "predictions_best_model.jsonl")
        else:
            load_checkpoint(self.mot, best_dir)
            best = self._test_results("best_model", best_dir)
        if self.main:
            write_json(self.out / "final_results_last_epoch.json", last)
            write_json(self.out / "final_results_best_model.json", best)
        return {"last_epoch": last, "best_model": best}

    def _test_results(self, name: str, checkpoint) -> dict:
        args, st = self.args, self.state
        test = self.splits.test[: args.test_max_samples or None]
        mode = generation_mode(args)
        res: dict = {"model": name, "checkpoint": str(checkpoint) if checkpoint else None, "split": "test"}
        if test:
            summary, records = evaluate_generation(
                self.mot, test, mode=mode, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                compile_check=not args.no_compile_check, accelerator=self.acc, case_ids=self.splits.case_ids,
            )
            loss = evaluate_lm_loss(self.mot, test, batch_size=args.eval_batch_size, accelerator=self.acc)
            res.update(summary)
            res["lm_loss"] = loss["lm_loss"]
            if args.save_predictions and self.main:
                write_predictions(self.out / f"predictions_{name}.jsonl", records)
        else:
            res.update({"num_samples": 0, "metrics": None, "lm_loss": None, "generation_mode": mode,
                        "note": "the test split is empty (--test_ratio)"})
        res["best_model_metric"] = args.best_model_metric
        res["best_validation"] = {"value": st.best_value, "step": st.best_step, "epoch": st.best_epoch}
        res["training"] = {
            "global_step": st.global_step, "epochs": st.epoch, "total_steps": self.total_steps,
            "nonfinite_losses": st.nonfinite_losses, "skipped_steps": st.skipped_steps,
            "target_tokens": st.target_tokens, "train_seconds": round(st.train_seconds, 3),
            "final_train_loss": self.last_log.get("loss"), "world_size": self.world,
        }
        res["experts"] = self.mot.expert_names
        res["preset"] = self.mot.preset
        if self.main:
            say(f"{name}: " + format_results(res), self.acc)
        return res

