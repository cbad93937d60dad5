"""A Whisper encoder-decoder (WhisperForConditionalGeneration), for real: plan, train, save/load both ways with
PEFT, merge, generate. The shared checks (tests/models/parity.py) run through TestWhisper.

LoRA on q_proj and v_proj of the encoder and the decoder (self- and cross-attention), with the config of PEFT's
Whisper guide (task_type None; lora_dropout 0.05, bias "none"), at r=8.
"""
import peft
import torch

import surgery
from tests.models import parity
from tests.support import vision_models as vm

CONFIG = vm.whisper_config()


def _logits(model):
    with torch.no_grad():
        return model(input_features=vm.input_features(CONFIG), decoder_input_ids=vm.decoder_tokens(CONFIG)).logits


def _greedy(model):
    with torch.no_grad():
        out = model.generate(input_features=vm.input_features(CONFIG), max_new_tokens=4, do_sample=False,
                             num_beams=1, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


WHISPER = parity.Family(
    build=vm.tiny_whisper,
    lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none"),
    output=_logits,
    loss=lambda m: m(input_features=vm.input_features(CONFIG), labels=vm.decoder_tokens(CONFIG)).loss,
)


class TestWhisper(parity.FamilyChecks):
    family = WHISPER


def test_encoder_and_decoder_attention_are_targeted():
    expected = [f"model.encoder.layers.{i}.self_attn.{p}" for i in range(CONFIG.encoder_layers)
                for p in ("q_proj", "v_proj")]
    expected += [f"model.decoder.layers.{i}.{a}.{p}" for i in range(CONFIG.decoder_layers)
                 for a in ("self_attn", "encoder_attn") for p in ("q_proj", "v_proj")]
    assert parity.peft_wrapped(WHISPER.peft())[0] == sorted(expected)


def test_greedy_generate_equals_peft(tmp_path):
    model = parity.trained_surgery(WHISPER)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(vm.tiny_whisper(), tmp_path).eval()
    (ours_seq, ours_scores), (their_seq, their_scores) = _greedy(model), _greedy(theirs)
    assert ours_seq.shape[1] >= 4   # 4 new tokens were generated (the decoder prompt may be kept too)
    assert torch.equal(ours_seq, their_seq)
    assert parity.max_diff(ours_scores, their_scores) <= parity.TOL
    # the adapter is in the loop: the base model scores the same steps differently
    assert parity.max_diff(ours_scores, _greedy(vm.tiny_whisper())[1]) > 1e-3


def test_seq2seq_task_type_passes_input_features_through():
    # surgery's PeftModelForSeq2SeqLM takes Whisper's input_features (no input_ids); with PEFT's adapter tensors
    # it gives PEFT's (task_type None) logits, loss and greedy tokens
    theirs = parity.peft_with_weights(WHISPER)
    ours = WHISPER.surgery(task_type="SEQ_2_SEQ_LM")
    assert isinstance(ours, surgery.PeftModelForSeq2SeqLM)
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    ours.eval()
    assert parity.max_diff(_logits(ours), _logits(theirs)) <= parity.TOL
    with torch.no_grad():
        losses = [WHISPER.loss(m).item() for m in (ours, theirs)]
    assert abs(losses[0] - losses[1]) <= parity.TOL
    assert torch.equal(_greedy(ours)[0], _greedy(theirs)[0])


def test_cli_plans_bundled_whisper_tiny(tmp_path, monkeypatch):
    table = parity.check_cli_plan("whisper-tiny", dict(WHISPER.lora), tmp_path, monkeypatch)
    assert "model.decoder.layers.3.encoder_attn.q_proj" in table and "384x384" in table
